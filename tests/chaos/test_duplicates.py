"""Duplicates and redelivery during a small rollout: no side effect happens twice.

Real services (`flotilla up` + `flotilla sim`). While the rollout runs, a share of the agent commands and of
the events (FLEET_EVENTS and FLEET_REPORTS) is re-published with the same Nats-Msg-Id and headers; the rollout
start request is sent again with the same request id; and a share of the nodes carry the sim's `agent_crash`
fault, so their agent drops the ack of a step (before or after its effect) and JetStream redelivers it.
Afterwards, from the event log and the agents' journal: each join made one cluster, one rollout was started, each
(rollout, node, step) command succeeded once, each node state transition was recorded once, and the
invariants hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import nats
import pytest
from chaos_fleet import COPY_HEADER, ChaosFleet, all_events, request, wait_ready
from nats.aio.msg import Msg
from rollout_invariants import check, final_states

from flotilla_contracts.envelope import H_MSG_ID, H_SCHEMA
from flotilla_contracts.streams import FLEET_EVENTS, FLEET_REPORTS
from flotilla_contracts.subjects import Service
from flotilla_contracts.v1 import upgrade as up
from flotilla_contracts.v1 import upgrade_status as st
from flotilla_runtime import logins
from flotilla_testkit import eventually

pytestmark = [pytest.mark.integration, pytest.mark.chaos]
UPG = Service.UPGRADE_ORCHESTRATOR
CLUSTERS, NODES, MAX_UNAVAILABLE, MAX_CLUSTERS = 6, 4, 1, 3
SHARE = 0.3
PREFIX = "dup"
CRASHING = [f"{PREFIX}-{c:04d}-n{n:02d}" for c in range(CLUSTERS) for n in range(NODES) if (c + n) % 3 == 0]


class Duplicator:
    """Re-publishes a seeded share of agent commands and events, each at most once, with its own headers."""

    def __init__(self, url: str, seed: int) -> None:
        self.url = url
        self.rng = random.Random(seed)
        self.injected: Counter[str] = Counter()
        self.dropped_by_stream: Counter[str] = Counter()
        self._done: set[str] = set()

    def _copy_headers(self, kind: str, schema: str, headers: dict[str, str]) -> tuple[str, dict[str, str]]:
        """Half the copies keep the Nats-Msg-Id (the stream's dedup must drop them); the other half get a new
        one, as after the duplicate window or a producer re-sending, so the consumer's own idempotency
        (agent journal by command id, processed ids and domain state) must hold. New-id copies of events are
        limited to what agents and registration emit, and marked so the checked log leaves them out."""
        if self.rng.random() < 0.5 or (kind == "events" and not schema.startswith(("agent.", "registration."))):
            return "same-id", headers
        return "new-id", {**headers, H_MSG_ID: f"copy-{uuid.uuid4().hex}", COPY_HEADER: "1"}

    async def run(self, stop: asyncio.Event) -> None:
        nc = await logins.connect(self.url)
        js = nc.jetstream()

        async def again(kind: str, msg: Msg) -> None:
            headers = dict(msg.headers or {})
            msg_id = headers.get(H_MSG_ID, "")
            if not msg_id or msg_id in self._done or self.rng.random() > SHARE:
                return
            self._done.add(msg_id)
            mode, copy = self._copy_headers(kind, headers.get(H_SCHEMA, ""), headers)
            ack = await js.publish(msg.subject, msg.data, headers=copy)
            self.injected[f"{kind}/{mode}"] += 1
            self.dropped_by_stream[f"{kind}/{mode}"] += bool(ack.duplicate)

        commands = await nc.subscribe("fleet.v1.agent.>")
        events = await js.subscribe("fleet.v1.evt.>", ordered_consumer=True, stream=FLEET_EVENTS.name)
        reports = await js.subscribe("fleet.v1.evt.>", ordered_consumer=True, stream=FLEET_REPORTS.name)
        try:
            while not stop.is_set():
                for kind, sub in (("commands", commands), ("events", events), ("events", reports)):
                    with contextlib.suppress(TimeoutError, nats.errors.TimeoutError):
                        while True:
                            await again(kind, await sub.next_msg(0.02))
        finally:
            await nc.close()


async def drive(url: str) -> tuple[str, int]:
    spec = up.RolloutSpec(
        target_version="v1.30.4",
        waves=up.WavesSpec(canary_clusters=1, percentages=[100]),
        max_concurrent_clusters=MAX_CLUSTERS,
        max_unavailable=MAX_UNAVAILABLE,
        failure_budget=up.FailureBudget(max_failed_nodes=0),
    )
    start = up.StartRolloutRequest(request_id=uuid.uuid4().hex, spec=spec)
    ids = {(await request(url, UPG, "upgrade.start", start, up.StartRolloutReply)).rollout_id for _ in range(3)}
    assert len(ids) == 1, f"the same request id started {len(ids)} rollouts"
    rollout_id = ids.pop()

    async def status() -> st.RolloutStatusReply:
        reply = await request(
            url, UPG, "upgrade.status", st.RolloutStatusRequest(rollout_id=rollout_id), st.RolloutStatusReply
        )
        assert reply.rollout.state is not st.RolloutState.FROZEN, reply.rollout.freeze
        return reply

    await eventually(
        status,
        f"rollout {rollout_id} to succeed",
        timeout_s=120,
        every_s=0.5,
        until=lambda reply: reply.rollout.state is st.RolloutState.SUCCEEDED,
    )
    return rollout_id, 3


def no_duplicate_effects(events: list[tuple[str, str, dict[str, Any]]], fleet: ChaosFleet, rollout_id: str) -> int:
    verdict = check(events, max_unavailable=MAX_UNAVAILABLE, max_clusters=MAX_CLUSTERS)
    assert not verdict.violations, verdict.violations
    finals = final_states(events)
    assert len(finals) == CLUSTERS * NODES and all(v[0] == "Uncordoned" for v in finals.values()), finals
    approved = Counter(
        d["cluster"]["identity"]["name"] for _, s, d in events if s.startswith("registration.ClusterApproved/")
    )
    clusters = {
        d["cluster"]["identity"]["name"]: d["cluster"]["cluster_id"]
        for _, s, d in events
        if s.startswith("registration.ClusterApproved/")
    }
    assert len(clusters) == CLUSTERS and all(n == 1 for n in approved.values()), f"joins: {approved}"
    started = [d for _, s, d in events if s.startswith("upgrade.RolloutStarted/")]
    assert len(started) == 1, f"{len(started)} RolloutStarted events for one start request"
    moves = Counter(
        (d["cluster_id"], d["node_id"], d["to"], d.get("direction", "forward"))
        for _, s, d in events
        if s.startswith("upgrade.NodeStepStateChanged/") and d["rollout_id"] == rollout_id
    )
    twice = {k: n for k, n in moves.items() if n > 1}
    assert not twice, f"node transitions recorded more than once: {twice}"
    journal = [row for row in fleet.journal_steps() if row[2] == rollout_id]
    ran = Counter((c, n, step) for c, n, _, step, _, status in journal if status == "succeeded")
    assert ran and not {k: v for k, v in ran.items() if v > 1}, "a step succeeded twice in the journal"
    succeeded = Counter(
        d["command_id"]
        for _, s, d in events
        if s.startswith("agent.NodeStepReported/") and d["outcome"] == "succeeded" and not d.get("replayed")
    )
    assert all(n == 1 for n in succeeded.values())
    return len(events)


async def test_duplicates_and_dropped_acks_have_no_duplicate_effects(tmp_path: Path) -> None:
    fault_args = [arg for node in CRASHING for arg in ("--fault", f"{node}=agent_crash")]
    fleet = ChaosFleet(tmp_path / ".flotilla", prefix=PREFIX, clusters=CLUSTERS, nodes=NODES, step_s=0.05,
                       sim_args=fault_args)  # fmt: skip
    try:
        await asyncio.to_thread(fleet.up)
        await wait_ready(fleet.url, CLUSTERS)
        duplicator = Duplicator(fleet.url, seed=4)
        stop = asyncio.Event()
        task = asyncio.create_task(duplicator.run(stop))
        try:
            rollout_id, start_requests = await drive(fleet.url)
        finally:
            stop.set()
            await task
        checked = no_duplicate_effects(await all_events(fleet.url), fleet, rollout_id)
        print(
            f"\nduplicates injected {dict(duplicator.injected)} (dropped by the stream's dedup "
            f"{dict(duplicator.dropped_by_stream)}); start request sent {start_requests}x; nodes dropping an ack "
            f"{len(CRASHING)}; messages checked {checked}"
        )
        assert sum(duplicator.injected.values()) >= 20, duplicator.injected
        assert duplicator.injected["commands/new-id"] >= 3, "no agent command reached an agent twice"
        assert duplicator.injected["events/new-id"] >= 3, "no event reached its consumers twice"
        assert duplicator.dropped_by_stream["commands/new-id"] == duplicator.dropped_by_stream["events/new-id"] == 0
    finally:
        await asyncio.to_thread(fleet.down)
