"""A rollout of 20 clusters x 5 sim nodes while services, the node-agents' process and nats-server are SIGKILLed.

Base: tests/e2e/test_rollout_e2e.py (real services via `flotilla up`, a `flotilla sim` fleet, invariants
from the event log). During the rollout a seeded schedule SIGKILLs registration, heartbeat, the upgrade
orchestrator and the sim process (every node-agent) and restarts each; nats-server is SIGKILLed and restarted
once. Afterwards: every invariant holds from the event log, no step ran twice (event log and agent journal),
no acknowledged event is missing (every journaled step's report is in the stream, each node's state chain
has no gap, every outbox is empty), and the rollout completes with every node Uncordoned.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from chaos_fleet import KILLABLE, ChaosFleet, all_events, request, wait_ready
from rollout_invariants import FORWARD, check, final_states

from flotilla_contracts.subjects import Service
from flotilla_contracts.v1 import upgrade as up
from flotilla_contracts.v1 import upgrade_status as st
from flotilla_testkit import ConditionNotMet, eventually

pytestmark = [pytest.mark.integration, pytest.mark.chaos]
UPG = Service.UPGRADE_ORCHESTRATOR
CLUSTERS, NODES, MAX_UNAVAILABLE, MAX_CLUSTERS = 20, 5, 2, 4
DONE = (st.RolloutState.SUCCEEDED, st.RolloutState.COMPLETED_WITH_FAILURES, st.RolloutState.ABORTED)


def schedule(seed: int, rounds: int) -> list[str]:
    """Each victim `rounds` times in a seeded random order, nats-server once in the middle."""
    rng = random.Random(seed)
    victims = [v for _ in range(rounds) for v in [*(s.value for s in KILLABLE), "sim"]]
    rng.shuffle(victims)
    victims.insert(len(victims) // 2, "nats-server")
    return victims


async def chaos(
    fleet: ChaosFleet, victims: list[str], seed: int, gap_s: tuple[float, float], done: asyncio.Event
) -> None:
    rng = random.Random(seed)
    for victim in victims:
        await asyncio.sleep(rng.uniform(*gap_s))  # sleep: kills at random moments are the test
        if done.is_set():
            return
        if victim == "sim":
            await asyncio.to_thread(fleet.kill_sim)
        elif victim == "nats-server":
            await asyncio.to_thread(fleet.restart_nats)
        else:
            await asyncio.to_thread(fleet.kill_service, Service(victim))
        print(f"  killed {victim} at +{time.monotonic() - START[0]:.1f}s")


START = [0.0]


async def drive_rollout(url: str, done: asyncio.Event, timeout_s: float) -> tuple[st.RolloutStatusReply, int, int]:
    """Start the rollout and poll it to the end, retrying requests lost to kills and freezes caused by doubt."""
    spec = up.RolloutSpec(
        target_version="v1.30.4",
        waves=up.WavesSpec(canary_clusters=1, percentages=[50, 100]),
        max_concurrent_clusters=MAX_CLUSTERS,
        max_unavailable=MAX_UNAVAILABLE,
        failure_budget=up.FailureBudget(max_failed_nodes=0),
    )
    start = up.StartRolloutRequest(request_id=uuid.uuid4().hex, spec=spec)  # the same id on every retry
    deadline = time.monotonic() + timeout_s
    rollout_id, freezes, lost = "", 0, 0
    while True:
        assert time.monotonic() < deadline, f"rollout {rollout_id or '(not started)'} did not finish"
        try:
            if not rollout_id:
                rollout_id = (await request(url, UPG, "upgrade.start", start, up.StartRolloutReply)).rollout_id
            status = await request(
                url, UPG, "upgrade.status", st.RolloutStatusRequest(rollout_id=rollout_id), st.RolloutStatusReply
            )
            if status.rollout.state in DONE:
                done.set()
                return status, freezes, lost
            if status.rollout.state is st.RolloutState.FROZEN:
                freezes += 1
                assert status.rollout.freeze is not None and status.rollout.freeze.message, "a freeze states its reason"
                await request(url, UPG, "upgrade.retry", up.RetryRequest(rollout_id=rollout_id), st.RolloutReply)
        except AssertionError:
            raise
        except Exception:  # the orchestrator or nats-server is down right now: ask again
            lost += 1
        await asyncio.sleep(0.5)  # sleep: the operator's pace between looks (each look may act: start, retry)


async def wait_outboxes_empty(fleet: ChaosFleet, timeout_s: float = 20) -> dict[str, int]:
    """The outbox sizes once every outbox is empty, or the last ones seen after `timeout_s` (the caller asserts)."""
    try:
        return await eventually(
            fleet.outboxes, "every outbox empty", timeout_s=timeout_s, every_s=0.5, until=lambda s: not any(s.values())
        )
    except ConditionNotMet as short:
        return dict(short.last) if isinstance(short.last, dict) else {}


def verify(fleet: ChaosFleet, events: list[tuple[str, str, dict[str, Any]]], rollout_id: str) -> dict[str, int]:
    verdict = check(events, max_unavailable=MAX_UNAVAILABLE, max_clusters=MAX_CLUSTERS)
    assert not verdict.violations, verdict.violations
    finals = final_states(events)
    assert len(finals) == CLUSTERS * NODES
    not_done = {k: v for k, v in finals.items() if v[0] != "Uncordoned"}
    assert not not_done, f"I10: nodes not at the end state: {not_done}"
    # No gap in any node's chain of states: an acknowledged NodeStepStateChanged lost would leave one.
    reached: dict[tuple[str, str], set[str]] = {}
    for _, schema, data in events:
        if schema.startswith("upgrade.NodeStepStateChanged/") and data["rollout_id"] == rollout_id:
            reached.setdefault((data["cluster_id"], data["node_id"]), set()).add(data["to"])
    gaps = {k: set(FORWARD[1:]) - v for k, v in reached.items() if set(FORWARD[1:]) - v}
    assert len(reached) == CLUSTERS * NODES and not gaps, f"node state chains with gaps: {gaps}"
    # No step ran twice, from the agents' journal; every journaled success reached the stream.
    journal = [row for row in fleet.journal_steps() if row[2] == rollout_id]
    ran = Counter((c, n, r, s) for c, n, r, s, _, status in journal if status == "succeeded")
    twice = {k: v for k, v in ran.items() if v > 1}
    assert not twice, f"I4: steps that succeeded more than once in the journal: {twice}"
    reported = {
        d["command_id"]
        for _, schema, d in events
        if schema.startswith("agent.NodeStepReported/") and d["outcome"] == "succeeded"
    }
    missing = [row for row in journal if row[5] == "succeeded" and row[4] not in reported]
    assert not missing, f"journaled successes whose report is not in the stream: {missing[:10]}"
    return {"events": len(events), "journal_steps": len(journal), "steps_reported": verdict.steps_reported}


async def run_chaos(tmp_path: Path, *, rounds: int, seed: int, step_s: float, gap_s: tuple[float, float]) -> None:
    fleet = ChaosFleet(tmp_path / ".flotilla", prefix="chaos", clusters=CLUSTERS, nodes=NODES, step_s=step_s)
    try:
        await asyncio.to_thread(fleet.up)
        await wait_ready(fleet.url, CLUSTERS)
        START[0] = time.monotonic()
        done = asyncio.Event()
        victims = schedule(seed, rounds)
        killer = asyncio.create_task(chaos(fleet, victims, seed, gap_s, done))
        status, freezes, lost = await drive_rollout(fleet.url, done, timeout_s=300)
        await killer
        took = time.monotonic() - START[0]
        assert status.rollout.state is st.RolloutState.SUCCEEDED, status.failures
        survived = sum(fleet.kills.values())
        assert fleet.kills["nats-server"] == 1, f"the rollout ended before nats-server was restarted: {fleet.kills}"
        assert all(fleet.kills[v] >= 1 for v in [*(s.value for s in KILLABLE), "sim"]), fleet.kills
        sizes = await wait_outboxes_empty(fleet)
        assert not any(sizes.values()), f"events committed but never published: {sizes}"
        figures = verify(fleet, await all_events(fleet.url), status.rollout.rollout_id)
        print(
            f"\nchaos: rollout of {CLUSTERS}x{NODES} Succeeded in {took:.1f}s; kills survived {survived} "
            f"{dict(fleet.kills)}; freezes retried {freezes}; requests lost to kills {lost}; messages checked "
            f"{figures['events']} events, {figures['journal_steps']} journal steps, "
            f"{figures['steps_reported']} step reports; outboxes {sizes}"
        )
    finally:
        await asyncio.to_thread(fleet.down)


@pytest.mark.timeout(170)
async def test_a_rollout_survives_kills_short(tmp_path: Path) -> None:
    await run_chaos(tmp_path, rounds=1, seed=9, step_s=0.4, gap_s=(0.5, 2.0))


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_a_rollout_survives_kills_long(tmp_path: Path) -> None:
    await run_chaos(tmp_path, rounds=4, seed=99, step_s=1.0, gap_s=(1.0, 4.0))
