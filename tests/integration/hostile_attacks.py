"""The hostile member's attacks on cluster B, each with cluster A's logins only; each fills one table row
(sent, and what the server denied: the services' refusals are counted by the caller, hostile_support.Table)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import msgspec
import nats.errors
from bus_isolation_support import new_seed
from hostile_support import Row, Stolen, all_denied, login_agent, login_node, settle
from integration_support import WatchedConnection
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from test_member_flood import heartbeat_body

from flotilla_client.client import FlotillaClient
from flotilla_contracts import catalogue, permissions, subjects
from flotilla_contracts.envelope import H_SCHEMA, schema_id
from flotilla_contracts.ids import CLUSTER_AGENT_NODE
from flotilla_contracts.subjects import Service
from flotilla_contracts.v1 import scheduler as sched
from flotilla_contracts.v1.agent import NodeFacts, NodeStepCommand, NodeStepReported, StepOutcome
from flotilla_contracts.v1.common import NodeRole
from flotilla_contracts.v1.heartbeat import Heartbeat
from flotilla_contracts.v1.registration import ReportNodesRequest
from flotilla_contracts.v1.scheduler_events import AppliedStatusReported

NODE_CAP = 100  # both services' per-cluster node quota (the test lowers it), so one inventory report exceeds it
FLOOD = 20_000
SUBSCRIPTIONS = permissions.MAX_SUBSCRIPTIONS_PER_CONNECTION + 1000
HB_HEADERS = {H_SCHEMA: schema_id(Heartbeat)}


@dataclass
class Hostile:
    """The intruder's logins (all A's) and what the test knows of B (its id and nodes)."""

    url: str
    stolen: Stolen
    node: str  # the node of A whose login the intruder uses
    agent: WatchedConnection
    as_node: WatchedConnection
    b_id: str
    b_nodes: list[str]
    forged: list[str] = field(default_factory=list)  # command ids of B it forged reports for


async def forge_steps(hostile: Hostile, msg: Msg, row: Row) -> None:
    """On each command sent to B: failed and succeeded reports on A's subject (body naming A, then B) and on
    B's subject; the first four reach the orchestrator, the last two the server denies."""
    command = msgspec.json.decode(msg.data, type=NodeStepCommand)
    own = catalogue.subject_for(NodeStepReported, cluster_id=hostile.stolen.cluster_id, node_id=hostile.node)
    theirs = catalogue.subject_for(NodeStepReported, cluster_id=hostile.b_id, node_id=command.node_id)
    hostile.forged.append(command.command_id)
    for outcome in (StepOutcome.SUCCEEDED, StepOutcome.FAILED):
        for subject, cluster, node in (
            (own, hostile.stolen.cluster_id, hostile.node),
            (own, hostile.b_id, command.node_id),
            (theirs, hostile.b_id, command.node_id),
        ):
            report = NodeStepReported(
                command_id=command.command_id, rollout_id=command.rollout_id, epoch=command.epoch,
                cluster_id=cluster, node_id=node, node_name=node, step=command.step, outcome=outcome,
                reason="FORGED BY A", kubelet_version=command.target.kubernetes_version,
                occurred_at=datetime.now(UTC),
            )  # fmt: skip
            await hostile.as_node.nc.publish(subject, msgspec.json.encode(report), headers=_schema(report))
            row.sent += 1
    await hostile.as_node.nc.flush()


def _schema(message: msgspec.Struct) -> dict[str, str]:
    return {H_SCHEMA: schema_id(type(message))}  # type: ignore[arg-type]


async def forged_applied(hostile: Hostile, command: AppliedStatusReported, row: Row) -> None:
    """B's subscription reported Failed: on A's subject naming B, naming A (never sent to A), on B's subject."""
    a_id = hostile.stolen.cluster_id
    own = catalogue.subject_for(AppliedStatusReported, cluster_id=a_id, subscription=command.subscription)
    theirs = catalogue.subject_for(AppliedStatusReported, cluster_id=hostile.b_id, subscription=command.subscription)
    for subject, cluster in ((own, hostile.b_id), (own, a_id), (theirs, hostile.b_id)):
        report = AppliedStatusReported(
            command_id=command.command_id, cluster_id=cluster, subscription=command.subscription,
            generation=command.generation, state=sched.AppliedState.FAILED, message="FORGED BY A",
            occurred_at=datetime.now(UTC),
        )  # fmt: skip
        await hostile.agent.nc.publish(subject, msgspec.json.encode(report), headers=_schema(report))
        row.sent += 1
    row.by_server = await all_denied(hostile.agent, theirs, 1)


async def forged_inventory(hostile: Hostile, row: Row) -> None:
    """nodes.report naming B with A's credential, A's own with more nodes than the cap, and from a node login."""
    a_id, credential = hostile.stolen.cluster_id, hostile.stolen.credential

    def facts(names: list[str]) -> list[NodeFacts]:
        return [NodeFacts(node_id=n, node_name=n, role=NodeRole.WORKER, kubelet_version="v1.29.6") for n in names]

    subject = catalogue.subject_for(ReportNodesRequest)
    for cluster_id, nodes in ((hostile.b_id, hostile.b_nodes), (a_id, [f"ghost-{i:04d}" for i in range(NODE_CAP + 1)])):
        report = ReportNodesRequest(
            cluster_id=cluster_id,
            credential=credential,
            nodes=facts(nodes),
            complete=True,
            reported_at=datetime.now(UTC),
        )
        raw = await hostile.agent.nc.request(subject, msgspec.json.encode(report), timeout=10, headers=_schema(report))
        reply = msgspec.json.decode(raw.data, type=dict)
        assert not reply.get("ok") and reply["error"]["code"] in ("forbidden", "invalid_field"), reply
        row.sent += 1
    await hostile.as_node.nc.publish(subject, b"{}", reply=hostile.as_node.nc.new_inbox())  # a node is no agent
    row.sent += 1
    row.by_server = await all_denied(hostile.as_node, subject, 1)


async def forged_heartbeats_for_b(hostile: Hostile, row: Row) -> None:
    for connection in (hostile.as_node, hostile.agent):
        for node in hostile.b_nodes:
            subject = subjects.heartbeat(hostile.b_id, node)
            await connection.nc.publish(subject, heartbeat_body(hostile.b_id, node, 1), headers=HB_HEADERS)
            row.sent += 1
    row.by_server = sum(
        [await all_denied(c, f"fleet.v1.hb.{hostile.b_id}.", 3) for c in (hostile.as_node, hostile.agent)]
    )


async def invented_on_own_subject(hostile: Hostile, row: Row) -> None:
    """Heartbeats for 20,000 invented nodes of A, each on A's node's own subject (all the grant allows)."""
    subject = subjects.heartbeat(hostile.stolen.cluster_id, hostile.node)
    for i in range(FLOOD):
        body = heartbeat_body(hostile.stolen.cluster_id, f"ghost-{i:05d}", 1)
        await hostile.as_node.nc.publish(subject, body, headers=HB_HEADERS)
    row.sent = FLOOD
    await hostile.as_node.nc.flush(timeout=60)


async def invented_subjects(hostile: Hostile, row: Row) -> None:
    """Heartbeats for 20,000 invented nodes of A on their own subjects: 20,000 publishes the server denies."""
    for i in range(FLOOD):
        node = f"ghost-{i:05d}"
        body = heartbeat_body(hostile.stolen.cluster_id, node, 1)
        await hostile.as_node.nc.publish(subjects.heartbeat(hostile.stolen.cluster_id, node), body, headers=HB_HEADERS)
    row.sent = FLOOD
    await hostile.as_node.nc.flush(timeout=60)
    row.by_server = await all_denied(hostile.as_node, "fleet.v1.hb.", FLOOD)


async def pose_as_services(hostile: Hostile, row: Row) -> None:
    """Subscribe to discovery and service command subjects, as each of A's roles; the server denies all."""
    targets = [
        *subjects.SRV_VERBS,
        "$SRV.>",
        f"{subjects.SRV_INFO}.{Service.REGISTRATION.value}",
        subjects.ALL_COMMANDS,
    ]
    targets += [subjects.service_commands(s) for s in Service]
    for connection in (hostile.agent, hostile.as_node):
        for subject in targets:
            await connection.nc.subscribe(subject)
            row.sent += 1
        await connection.nc.flush()
        for subject in targets:
            row.by_server += await all_denied(connection, f'subscription to "{subject}"', 1, within_s=10)


async def foreign_logins(hostile: Hostile, row: Row) -> None:
    """As a node A does not have, as B's node (A's credential and key), as A's node with another key."""
    a_key, b_node = hostile.stolen.seeds[hostile.node], hostile.b_nodes[0]
    for node, cluster_id, seed in (
        ("ghost", "", new_seed()),
        (b_node, hostile.b_id, new_seed()),
        (b_node, hostile.b_id, a_key),
        (hostile.node, "", new_seed()),
        (CLUSTER_AGENT_NODE, "", new_seed()),
    ):
        row.sent += 1
        try:
            connection = await login_node(hostile.url, hostile.stolen, node, cluster_id=cluster_id, seed=seed)
        except nats.errors.Error as exc:
            assert "authorization" in str(exc).lower(), exc
            row.by_server += 1
        else:
            await connection.nc.close()


async def subscription_flood(hostile: Hostile, row: Row) -> None:
    """Subscriptions on one connection of A's (its own inbox, which its grant allows): the server cuts them."""
    connection = await login_agent(hostile.url, hostile.stolen)
    prefix = permissions.inbox_prefix(permissions.cluster_user(hostile.stolen.cluster_id))
    try:
        for i in range(SUBSCRIPTIONS):
            await connection.nc.subscribe(f"{prefix}.flood.{i}")
            row.sent += 1
        await connection.nc.flush(timeout=30)
    except (nats.errors.Error, TimeoutError):
        pass  # the server closed the connection at its limit

    # Past the bound the server answers -ERR 'maximum subscriptions exceeded' (nats-py closes on it): every
    # subscription past the bound is refused, the connection with it.
    await settle(lambda: connection.nc.is_closed, 10)
    told = f"{connection.nc.last_error} {connection.errors}".lower()
    if connection.nc.is_closed and "maximum subscriptions" in told:
        row.bounded = permissions.MAX_SUBSCRIPTIONS_PER_CONNECTION
        row.by_server = row.sent - row.bounded
    if not connection.nc.is_closed:
        await connection.nc.close()


async def b_commands(admin: FlotillaClient, hostile: Hostile, row: Row) -> list[Subscription]:
    """Forge reports for every step command B's nodes get, as soon as it is sent."""
    subs = []
    for node in hostile.b_nodes:

        async def on_command(msg: Msg) -> None:
            if (msg.headers or {}).get(H_SCHEMA) == schema_id(NodeStepCommand):
                await forge_steps(hostile, msg, row)

        subs.append(await admin.nc.subscribe(subjects.agent_commands_for(hostile.b_id, node), cb=on_command))
    await admin.nc.flush()
    return subs
