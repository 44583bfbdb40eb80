"""`flotilla_node_agent.fleet_sim` against a real nats-server: clusters join with a token through a tiny
registration responder (Pending first, Approved on a re-join with the credential), report their nodes,
heartbeat on each node's subject, and obey commands sent to the cluster id registration assigned."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import msgspec
import nats
import pytest
from nats.aio.msg import Msg

from flotilla_client.natsserver import NatsServer
from flotilla_contracts import catalogue, subjects
from flotilla_contracts.envelope import Reply
from flotilla_contracts.v1.agent import StepKind, StepOutcome
from flotilla_contracts.v1.heartbeat import Heartbeat, HeartbeatBatch
from flotilla_contracts.v1.registration import (
    ClusterState,
    JoinReply,
    JoinRequest,
    ReportNodesReply,
    ReportNodesRequest,
)
from flotilla_node_agent.fleet_sim import start_fleet
from flotilla_node_agent.sim_args import FleetSpec
from flotilla_runtime import logins
from flotilla_runtime.bus import ensure_streams
from flotilla_testkit import eventually

from .node_agent_support import Watch, send, step_command

pytestmark = pytest.mark.integration


class Registration:
    """Answers `join` and `nodes.report` per the contract; approves a cluster on its second join."""

    def __init__(self) -> None:
        self.joins: list[JoinRequest] = []
        self.reports: list[ReportNodesRequest] = []
        self.ids: dict[str, str] = {}

    async def start(self, nc: nats.NATS) -> None:
        async def join(msg: Msg) -> None:
            request = msgspec.json.decode(msg.data, type=JoinRequest)
            self.joins.append(request)
            uid = request.identity.uid
            if request.token != "tok-1" and request.credential != f"cred-{uid}":
                reply: Reply[JoinReply] = Reply(ok=False)
            else:
                cluster_id = self.ids.setdefault(uid, f"cl{len(self.ids)}")
                state = ClusterState.APPROVED if request.credential else ClusterState.PENDING
                reply = Reply(ok=True, data=JoinReply(cluster_id=cluster_id, state=state, credential=f"cred-{uid}"))
            await msg.respond(msgspec.json.encode(reply))

        async def report(msg: Msg) -> None:
            request = msgspec.json.decode(msg.data, type=ReportNodesRequest)
            self.reports.append(request)
            await msg.respond(msgspec.json.encode(Reply(ok=True, data=ReportNodesReply(added=len(request.nodes)))))

        await nc.subscribe(catalogue.subject_for(JoinRequest), cb=join)
        await nc.subscribe(catalogue.subject_for(ReportNodesRequest), cb=report)


async def test_a_simulated_fleet_joins_reports_heartbeats_and_obeys(nats_server: NatsServer, tmp_path: Path) -> None:
    nc = await logins.connect(nats_server.url)
    registration = Registration()
    await registration.start(nc)
    beats: list[tuple[str, Heartbeat]] = []

    async def on_beat(msg: Msg) -> None:
        beats.append((msg.subject, msgspec.json.decode(msg.data, type=Heartbeat)))

    await nc.subscribe(subjects.ALL_HEARTBEATS, cb=on_beat)
    watch = Watch()
    await watch.start(nc)
    spec = FleetSpec(
        clusters=3,
        nodes=2,
        versions=("v1.29.6", "v1.30.2"),
        token="tok-1",
        seed=3,
        heartbeat_interval_s=0.2,
        state_dir=tmp_path / "sim",
    )
    fleet = await start_fleet(spec, nats_server.url)
    try:

        def observed() -> tuple[dict[str, int], int, int]:
            return fleet.counts(), len(registration.reports), len(beats)

        await eventually(
            observed,
            "6 agents ready, 3 inventory reports and 12 heartbeats (counts, reports, heartbeats)",
            timeout_s=15,
            until=lambda seen: seen[0]["agents_ready"] == 6 and seen[1] >= 3 and seen[2] >= 12,
        )
        assert fleet.counts()["clusters_approved"] == 3
        assert sorted({j.token for j in registration.joins if j.token}) == ["tok-1"]
        assert all(j.credential is not None for j in registration.joins if j.token is None)
        assert {r.cluster_id for r in registration.reports} == {"cl0", "cl1", "cl2"}
        assert all(r.complete and len(r.nodes) == 2 for r in registration.reports)
        for subject, beat in beats:
            assert subject == subjects.heartbeat(beat.cluster_id, beat.node_id)
        versions = {beat.cluster_id: beat.kubelet_version for _, beat in beats}
        assert sorted(versions.values()) == ["v1.29.6", "v1.29.6", "v1.30.2"]

        # The services provision the streams, and they may come up after the agents: the agents heartbeat
        # meanwhile and create their command consumers once the streams are there.
        await ensure_streams(nc.jetstream())
        cluster_id = registration.ids[registration.joins[0].identity.uid]
        node = f"{registration.joins[0].identity.name}-n01"
        await send(nc, step_command(StepKind.CORDON, cluster=cluster_id, node=node))
        await watch.until(lambda: watch.final(StepKind.CORDON), within_s=10)
        assert watch.final(StepKind.CORDON)[0].outcome is StepOutcome.SUCCEEDED
    finally:
        await fleet.stop()
        await nc.close()


def test_the_sim_module_explains_itself() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "flotilla_node_agent.fleet_sim", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for flag in ("--clusters", "--nodes", "--versions", "--fail-rate", "--seed", "--token", "--server"):
        assert flag in done.stdout


async def test_batched_heartbeats_carry_every_node_of_a_cluster_in_one_message(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """`--batch-heartbeats`: one HeartbeatBatch per cluster and round on `fleet.v1.hb.<cluster>`, each node's own
    facts and sequence in it, and no single heartbeat beside it."""
    nc = await logins.connect(nats_server.url)
    batches: list[tuple[str, HeartbeatBatch]] = []
    singles: list[str] = []

    async def on_batch(msg: Msg) -> None:
        batches.append((msg.subject, msgspec.json.decode(msg.data, type=HeartbeatBatch)))

    async def on_single(msg: Msg) -> None:
        singles.append(msg.subject)

    await nc.subscribe(subjects.ALL_HEARTBEAT_BATCHES, cb=on_batch)
    await nc.subscribe(subjects.ALL_HEARTBEATS, cb=on_single)
    spec = FleetSpec(
        clusters=2, nodes=3, heartbeat_interval_s=0.2, batch_heartbeats=True, state_dir=tmp_path / "sim", prefix="bb"
    )
    fleet = await start_fleet(spec, nats_server.url)
    try:
        await eventually(lambda: len(batches) >= 6, "three rounds of batches from both clusters", timeout_s=15)
        for subject, batch in batches:
            assert subject == subjects.heartbeat_batch(batch.cluster_id)
            assert len(batch.beats) == 3 and {beat.cluster_id for beat in batch.beats} == {batch.cluster_id}
        nodes = {(beat.cluster_id, beat.node_id) for _, batch in batches for beat in batch.beats}
        assert len(nodes) == 6
        first = batches[0][1].beats[0]
        seqs = [
            b.seq
            for _, batch in batches
            for b in batch.beats
            if (b.cluster_id, b.node_id) == (first.cluster_id, first.node_id)
        ]
        assert len(seqs) >= 2 and seqs == sorted(set(seqs))  # the node's own sequence, +1 every round
        assert singles == []
        assert fleet.counts()["heartbeats_sent"] >= 18
    finally:
        await fleet.stop()
        await nc.close()
