"""A member cluster forges step reports for another cluster's command: the orchestrator (its own process, on a
real nats-server) refuses them by sender, reports them as a security event and counts them, and the other
cluster's rollout goes on as if nothing had been sent."""

from __future__ import annotations

import asyncio
import re
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import nats.js.errors
import pytest
from integration_support import fleet_events, service_log
from nats.aio.client import Client
from nats.js import JetStreamContext
from orchestrator_support import FakeAgents, publish_fleet
from registration_support import wait_until_serving
from test_orchestrator import FAST, plan_sees, wait_for

from flotilla_client import localfleet
from flotilla_client.client import FlotillaClient
from flotilla_client.natsserver import NatsServer
from flotilla_contracts import catalogue
from flotilla_contracts.envelope import H_MSG_ID, H_SCHEMA, schema_id
from flotilla_contracts.streams import FLEET_AGENT
from flotilla_contracts.subjects import Service
from flotilla_contracts.v1.agent import NodeStepCommand, NodeStepReported, StepOutcome
from flotilla_contracts.v1.security import MemberRefused
from flotilla_contracts.v1.upgrade import RolloutSpec, StartRolloutReply, StartRolloutRequest, WavesSpec
from flotilla_contracts.v1.upgrade_status import NodeStepState, RolloutState
from flotilla_testkit import eventually

pytestmark = pytest.mark.integration
UO = Service.UPGRADE_ORCHESTRATOR
V, X = "c0000", "c0001"  # the victim and the forger


async def first_command(js: JetStreamContext, cluster: str, node: str, within_s: float = 20.0) -> NodeStepCommand:
    """The command sent to `node` (waiting on FLEET_AGENT until the orchestrator has issued it)."""
    subject = catalogue.subject_for(NodeStepCommand, cluster_id=cluster, node_id=node)
    msg = await eventually(
        lambda: js.get_last_msg(FLEET_AGENT.name, subject),
        f"a command sent to {cluster}/{node}",
        timeout_s=within_s,
        every_s=0.1,
        retrying=(nats.js.errors.NotFoundError,),
    )
    return msgspec.json.decode(msg.data, type=NodeStepCommand)


async def forge(js: JetStreamContext, command: NodeStepCommand, outcome: StepOutcome, cluster: str, node: str) -> None:
    """What X's credential may publish: a report on X's own node subject, here carrying V's command id."""
    report = NodeStepReported(
        command_id=command.command_id,
        rollout_id=command.rollout_id,
        epoch=command.epoch,
        cluster_id=cluster,
        node_id=node,
        node_name=node,
        step=command.step,
        outcome=outcome,
        reason="FORGED BY X",
        kubelet_version=command.target.kubernetes_version,
        occurred_at=datetime.now(UTC),
    )
    subject = catalogue.subject_for(NodeStepReported, cluster_id=X, node_id=f"{X}-n00")
    headers = {H_SCHEMA: schema_id(NodeStepReported), H_MSG_ID: uuid.uuid4().hex}
    await js.publish(subject, msgspec.json.encode(report), headers=headers)


async def refused_total(port: int) -> dict[str, float]:
    """flotilla_member_refused_total by reason, from the orchestrator's /metrics."""

    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return str(response.read().decode())

    text = await asyncio.to_thread(get)
    found = re.findall(r'^flotilla_member_refused_total\{reason="([a-z_]+)"\} ([0-9.e+]+)$', text, re.MULTILINE)
    return {reason: float(value) for reason, value in found}


async def counted(port: int, expected: dict[str, float], within_s: float = 30.0) -> None:
    seen = await eventually(
        lambda: refused_total(port),
        f"refusals counted up to {expected}",
        timeout_s=within_s,
        every_s=0.1,
        until=lambda seen: all(seen.get(reason, 0) >= count for reason, count in expected.items()),
    )
    assert seen == expected, seen


async def refusal_events(nc: Client) -> list[MemberRefused]:
    """The MemberRefused events the orchestrator published about X, in FLEET_EVENTS."""
    subject = catalogue.subject_for(MemberRefused, service=UO.value, cluster_id=X)
    return [msgspec.json.decode(m.data, type=MemberRefused) for m in await fleet_events(nc) if m.subject == subject]


async def test_another_clusters_forged_step_reports_are_refused_and_change_nothing(
    nats_server: NatsServer, nc: Client, tmp_path: Path
) -> None:
    js = nc.jetstream()
    nodes = await publish_fleet(js, clusters=2, nodes=2, cps=1)
    entry, process = localfleet.start_service(UO, tmp_path, nats_server.url, FAST)
    agents = FakeAgents(nc, nodes)
    try:
        await wait_until_serving(nats_server.url, UO)
        spec = RolloutSpec(target_version="v1.30.4", waves=WavesSpec(canary_clusters=2), max_concurrent_clusters=2)
        async with FlotillaClient(nats_server.url) as client:
            await plan_sees(client, spec, clusters=2)
            started = await client.request(
                UO, "upgrade.start", StartRolloutRequest(request_id="f1", spec=spec), StartRolloutReply
            )
            # No agent runs yet: V's first command (cordon its control plane) stays in flight while X forges.
            victim = await first_command(js, V, f"{V}-n00")
            for outcome in (StepOutcome.FAILED, StepOutcome.SUCCEEDED, StepOutcome.FAILED):
                await forge(js, victim, outcome, X, f"{X}-n00")
            await forge(js, victim, StepOutcome.FAILED, V, f"{V}-n00")  # V's name in the body, on X's subject
            await counted(entry.http_port, {"not_own_command": 3, "subject_body_mismatch": 1})

            status = await wait_for(client, started.rollout_id, {RolloutState.RUNNING})
            assert status.rollout.freeze is None and status.failures == []
            cluster = next(c for c in status.clusters if c.cluster_id == V)
            first = next(n for n in cluster.nodes if n.node_id == f"{V}-n00")
            assert (first.state, first.step_in_flight) == (NodeStepState.PENDING, victim.step), first
            assert cluster.freeze is None and cluster.nodes_failed == 0
            events = await refusal_events(nc)  # one per reason in the window, not one per report
            assert sorted((e.reason.value, e.refused, e.node) for e in events) == [
                ("not_own_command", 1, f"{X}-n00"),
                ("subject_body_mismatch", 1, f"{X}-n00"),
            ]
            assert all(e.service == UO.value and e.cluster_id == X for e in events)
            assert victim.command_id in next(e.detail for e in events if e.reason.value == "not_own_command")

            agents.start()
            done = await wait_for(client, started.rollout_id, {RolloutState.SUCCEEDED})
        assert done.rollout.nodes.succeeded == 4 and done.failures == []
        assert all(n.version == "v1.30.4" and not n.cordoned_by for n in nodes.values())
        assert agents.violations == []
        log = localfleet.log_path(tmp_path, UO.value).read_text()
        assert "refused a step report" in log and started.rollout_id in log and victim.command_id in log
    finally:
        await agents.stop()
        process.terminate()
        process.wait(15)
    assert process.returncode == 0, service_log(tmp_path, UO)
