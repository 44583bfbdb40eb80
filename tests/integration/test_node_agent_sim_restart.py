"""A restarted `flotilla_node_agent.fleet_sim` (same state folder and prefix) on a real nats-server: its nodes come
back at the versions they were upgraded to, still cordoned when they were, and its step journal answers
a redelivered command with the recorded outcome."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import nats
import pytest
from nats.aio.msg import Msg

from flotilla_client.natsserver import NatsServer
from flotilla_contracts import catalogue
from flotilla_contracts.v1.agent import NodeFacts, StepKind, StepOutcome
from flotilla_contracts.v1.registration import ReportNodesRequest
from flotilla_node_agent.fleet_sim import Fleet, start_fleet
from flotilla_node_agent.sim_args import FleetSpec
from flotilla_runtime import logins
from flotilla_runtime.bus import ensure_streams

from .node_agent_support import STEPS, Watch, send, step_command
from .test_node_agent_sim import Registration

pytestmark = pytest.mark.integration
CONTROL_PLANE, WORKER = "sim-0000-n00", "sim-0000-n01"


async def all_ready(fleet: Fleet) -> None:
    await asyncio.wait_for(asyncio.gather(*(agent.ready.wait() for agent in fleet.agents)), 15)


async def node_reports(nc: nats.NATS) -> asyncio.Queue[ReportNodesRequest]:
    """The cluster agents' node reports from now on (beside the registration responder, which answers them)."""
    reports: asyncio.Queue[ReportNodesRequest] = asyncio.Queue()

    async def on_report(msg: Msg) -> None:
        reports.put_nowait(msgspec.json.decode(msg.data, type=ReportNodesRequest))

    await nc.subscribe(catalogue.subject_for(ReportNodesRequest), cb=on_report)
    return reports


async def test_a_restarted_sim_finds_its_nodes_upgraded_and_cordoned_as_it_left_them(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    nc = await logins.connect(nats_server.url)
    await ensure_streams(nc.jetstream())
    registration = Registration()
    await registration.start(nc)
    watch = Watch()
    await watch.start(nc)
    spec = FleetSpec(clusters=1, nodes=3, token="tok-1", seed=3, heartbeat_interval_s=0.2, state_dir=tmp_path / "sim")
    try:
        fleet = await start_fleet(spec, nats_server.url)
        try:
            await all_ready(fleet)
            cluster_id = registration.ids[registration.joins[0].identity.uid]

            async def run(node: str, steps: tuple[StepKind, ...]) -> None:
                for step in steps:
                    await send(nc, step_command(step, cluster=cluster_id, node=node))
                    await watch.until(lambda step=step: watch.final(step, node_id=node), within_s=15)
                    assert watch.final(step, node_id=node)[0].outcome is StepOutcome.SUCCEEDED

            await run(CONTROL_PLANE, STEPS)  # upgraded and uncordoned
            await run(WORKER, STEPS[:3])  # upgraded, still cordoned
        finally:
            await fleet.stop()

        reports = await node_reports(nc)
        fleet = await start_fleet(spec, nats_server.url)
        try:
            report = await asyncio.wait_for(reports.get(), 15)  # the first, as the restarted sim found its nodes
            await all_ready(fleet)
            facts: dict[str, NodeFacts] = {n.node_name: n for n in report.nodes}
            assert facts[CONTROL_PLANE].kubelet_version == "v1.30.2" and not facts[CONTROL_PLANE].unschedulable
            assert facts[WORKER].kubelet_version == "v1.30.2" and facts[WORKER].unschedulable
            assert facts["sim-0000-n02"].kubelet_version == "v1.29.6" and not facts["sim-0000-n02"].unschedulable
            assert registration.joins[-1].identity.kubernetes_version == "v1.30.2"  # the control plane's now

            # The journal survived too: the same upgrade command again is answered from it, not re-run.
            await send(nc, step_command(StepKind.UPGRADE, cluster=cluster_id, node=WORKER))
            await watch.until(lambda: len(watch.final(StepKind.UPGRADE, node_id=WORKER)) == 2, within_s=15)
            assert watch.final(StepKind.UPGRADE, node_id=WORKER)[1].replayed
            # Still known as cordoned by the rollout, so the rollout may uncordon it (I9).
            await send(nc, step_command(StepKind.UNCORDON, cluster=cluster_id, node=WORKER))
            await watch.until(lambda: watch.final(StepKind.UNCORDON, node_id=WORKER), within_s=15)
            uncordoned = watch.final(StepKind.UNCORDON, node_id=WORKER)[0]
            assert uncordoned.outcome is StepOutcome.SUCCEEDED and uncordoned.message == "uncordoned"
        finally:
            await fleet.stop()
    finally:
        await nc.close()
