"""Least-privilege bus: what a cluster's credential lets it do on `flotilla up`'s nats-server, and what not.

Cluster agents authenticate through the registration service's auth callout with their per-cluster
credential; a node's agent adds its own key (it signs the server's nonce). Cluster A tries B's heartbeat
subject, B's agent commands and consumers, the JetStream API, other inboxes, every command subject that is not
an agent's, and forged events; node n1 tries n2's subjects; the cluster agent tries its nodes'; members try to
answer discovery: every attempt must be denied by the server, while A's own traffic (the control group) goes
through. Node logins for nodes not in the inventory, without a key or with a second key are refused. A
deregistered cluster's credential is refused on its next connect.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import nats
import nats.errors
import pytest

from flotilla_client.client import FlotillaClient
from flotilla_contracts import catalogue, permissions, subjects
from flotilla_contracts.catalogue import Kind
from flotilla_contracts.envelope import H_SCHEMA, schema_id
from flotilla_contracts.streams import FLEET_AGENT, FLEET_REPORTS, agent_consumer
from flotilla_contracts.subjects import Service
from flotilla_contracts.v1.deadletter import AgentDeadLettered, DeadLettered
from flotilla_contracts.v1.registration import (
    ClusterReply,
    DeregisterClusterRequest,
    ReportNodesRequest,
)
from flotilla_runtime import codec, logins
from flotilla_runtime.agent_consumers import AgentConsumers
from flotilla_runtime.bus import connect_options
from flotilla_testkit import eventually

from .bus_isolation_support import (
    DENIED,
    NODE,
    Fleet,
    connect,
    connect_as_node,
    isolated_fleet,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    yield from isolated_fleet(tmp_path_factory)


async def test_a_cluster_reaches_its_own_subjects(fleet: Fleet) -> None:
    """The control group: without it every denial below could be a broken connection."""
    a = await connect_as_node(fleet, "iso-a", NODE)
    admin = await logins.connect(fleet.admin_url, **connect_options(fleet.admin_url))
    try:
        seen = await admin.subscribe(f"fleet.v1.hb.{fleet.ids['iso-a']}.>")
        await admin.flush()
        await a.nc.publish(subjects.heartbeat(fleet.ids["iso-a"], NODE), b"{}")
        assert (await seen.next_msg(timeout=5)).subject == subjects.heartbeat(fleet.ids["iso-a"], NODE)

        # Its own node's durable consumer, created by the hub when it has work (as the orchestrator does): the
        # command wakes the node on its own command subject, and the node reads and acks it from the consumer.
        js = a.nc.jetstream()
        command = subjects.agent_command(fleet.ids["iso-a"], NODE, "step")
        wake = await a.nc.subscribe(subjects.agent_commands_for(fleet.ids["iso-a"], NODE))
        await a.nc.flush()
        await AgentConsumers(lambda: admin.jetstream()).prepare([{"subject": command}])
        await admin.jetstream().publish(command, b"{}")
        assert (await wake.next_msg(timeout=5)).subject == command
        sub = await js.pull_subscribe_bind(durable=agent_consumer(fleet.ids["iso-a"], NODE), stream=FLEET_AGENT.name)
        [msg] = await sub.fetch(1, timeout=5)
        await msg.ack()

        # Its own dead letters are recorded (a JetStream publish, acknowledged by the bounded FLEET_REPORTS).
        own_dead = catalogue.subject_for(AgentDeadLettered, service="node-agent", cluster_id=fleet.ids["iso-a"])
        ack = await js.publish(own_dead, b"{}")
        assert ack.stream == FLEET_REPORTS.name

        # The heartbeat config query (an agent-facing command) is answered.
        reply = await a.nc.request(subjects.command(Service.HEARTBEAT, "config.get"), b"{}", timeout=5)
        assert reply.data
        assert not [e for e in a.errors if "permissions violation" in e.lower()]
    finally:
        await a.nc.close()
        await admin.close()


async def test_cluster_a_cannot_reach_cluster_b(fleet: Fleet) -> None:
    a = await connect_as_node(fleet, "iso-a", NODE)
    admin = await logins.connect(fleet.admin_url, **connect_options(fleet.admin_url))
    try:
        b_id = fleet.ids["iso-b"]
        spy = await admin.subscribe(f"fleet.v1.hb.{b_id}.>")
        await admin.flush()
        b_heartbeat = subjects.heartbeat(fleet.ids["iso-b"], NODE)
        await a.nc.publish(b_heartbeat, b"{}")
        assert await a.denied(b_heartbeat), "A published B's heartbeat"
        with pytest.raises(nats.errors.TimeoutError):
            await spy.next_msg(timeout=0.5)

        # B's agent commands: neither the subjects nor B's durable consumer.
        for subject in (
            subjects.agent_commands_for(fleet.ids["iso-b"], NODE),
            "fleet.v1.agent.>",
            f"fleet.v1.agent.{fleet.ids['iso-b']}.>",
        ):
            await a.nc.subscribe(subject)
            assert await a.denied(subject), f"A subscribed to {subject}"
        b_consumer = agent_consumer(fleet.ids["iso-b"], NODE)
        b_filter = subjects.agent_commands_for(fleet.ids["iso-b"], NODE)
        a_consumer = agent_consumer(fleet.ids["iso-a"], NODE)
        js_api = [
            f"$JS.API.CONSUMER.MSG.NEXT.{FLEET_AGENT.name}.{b_consumer}",
            f"$JS.API.CONSUMER.INFO.{FLEET_AGENT.name}.{b_consumer}",
            f"$JS.API.CONSUMER.CREATE.{FLEET_AGENT.name}.{b_consumer}.{b_filter}",
            # A's own consumer name filtered on B's subjects, in both create forms.
            f"$JS.API.CONSUMER.CREATE.{FLEET_AGENT.name}.{a_consumer}.{b_filter}",
            f"$JS.API.CONSUMER.DURABLE.CREATE.{FLEET_AGENT.name}.{a_consumer}",
            f"$JS.API.CONSUMER.CREATE.{FLEET_AGENT.name}",
            f"$JS.API.CONSUMER.DELETE.{FLEET_AGENT.name}.{b_consumer}",
            "$JS.API.INFO",
            "$JS.API.STREAM.LIST",
            "$JS.API.STREAM.NAMES",
            "$JS.API.STREAM.INFO.FLEET_EVENTS",
            "$JS.API.STREAM.DELETE.FLEET_EVENTS",
            "$JS.API.STREAM.PURGE.FLEET_AGENT",
            "$JS.API.STREAM.UPDATE.FLEET_EVENTS",
            "$JS.API.STREAM.UPDATE.FLEET_REPORTS",  # lifting its own bound
            "$JS.API.STREAM.PURGE.FLEET_REPORTS",
            "$JS.API.STREAM.MSG.GET.FLEET_EVENTS",
            "$JS.API.STREAM.MSG.DELETE.FLEET_EVENTS",
            f"$JS.API.DIRECT.GET.FLEET_EVENTS.fleet.v1.evt.host-keys.{fleet.ids['iso-b']}.set",
            "$JS.API.CONSUMER.MSG.NEXT.FLEET_EVENTS.registration-inventory",
            f"$JS.ACK.{FLEET_AGENT.name}.{b_consumer}.1.1.1.1.0",
        ]
        for subject in js_api:
            await a.nc.publish(subject, b"{}", reply=a.nc.new_inbox())
            assert await a.denied(subject), f"A used {subject}"

        # Other inboxes: B's, a service's, the admin's, and all of them.
        for inbox in (f"_INBOX.c.{fleet.ids['iso-b']}.>", "_INBOX.registration.>", "_INBOX.admin.>", "_INBOX.>", ">"):
            await a.nc.subscribe(inbox)
            assert await a.denied(inbox), f"A subscribed to {inbox}"
    finally:
        await a.nc.close()
        await admin.close()


async def test_only_the_clusters_own_identity_relays_its_heartbeat_batch(fleet: Fleet) -> None:
    """A's cluster agent may send A's HeartbeatBatch (docs/heartbeat.md); not B's, and a node of A may not."""
    agent = await connect(fleet.plain_url, permissions.cluster_user(fleet.ids["iso-a"]), fleet.clusters["iso-a"])
    node = await connect_as_node(fleet, "iso-a", NODE)
    admin = await logins.connect(fleet.admin_url, **connect_options(fleet.admin_url))
    try:
        spy = await admin.subscribe(subjects.ALL_HEARTBEAT_BATCHES)
        await admin.flush()
        own, other = subjects.heartbeat_batch(fleet.ids["iso-a"]), subjects.heartbeat_batch(fleet.ids["iso-b"])
        await agent.nc.publish(own, b"{}")
        assert (await spy.next_msg(timeout=5)).subject == own
        await agent.nc.publish(other, b"{}")
        assert await agent.denied(other), "A's agent relayed B's heartbeats"
        await node.nc.publish(own, b"{}")
        assert await node.denied(own), "a node spoke for its cluster's other nodes"
        with pytest.raises(nats.errors.TimeoutError):
            await spy.next_msg(timeout=0.5)
    finally:
        await agent.nc.close()
        await node.nc.close()
        await admin.close()


async def test_cluster_a_can_send_no_command_but_the_agent_ones(fleet: Fleet) -> None:
    a = await connect(fleet.plain_url, permissions.cluster_user(fleet.ids["iso-a"]), fleet.clusters["iso-a"])
    try:
        tried = 0
        for op in catalogue.OPERATIONS:
            if op.kind is not Kind.COMMAND:
                continue
            subject = op.filter.replace("*", Service.REGISTRATION.value)
            if subject in permissions.AGENT_COMMANDS:
                continue
            await a.nc.publish(subject, b"{}", reply=a.nc.new_inbox())
            assert await a.denied(subject), f"A sent the command {subject}"
            tried += 1
        assert tried >= 30  # every command of every service but the three agent-facing ones
        # Forged agent commands and other services' events.
        forged = [
            subjects.agent_command(fleet.ids["iso-b"], NODE, "step"),
            subjects.agent_command(fleet.ids["iso-a"], NODE, "step"),
            f"fleet.v1.evt.node-step.{fleet.ids['iso-b']}.n1.reported",
            f"fleet.v1.evt.cluster.{fleet.ids['iso-a']}.approved",
            "fleet.v1.evt.rollout.r1.started",
            f"fleet.v1.evt.node-health.{fleet.ids['iso-a']}.n1.changed",
            # Dead letters: only on its own cluster's agent subject, not B's nor the services' shared ones.
            catalogue.subject_for(AgentDeadLettered, service=Service.NODE_AGENT.value, cluster_id=fleet.ids["iso-b"]),
            catalogue.subject_for(DeadLettered, service=Service.NODE_AGENT.value),
            catalogue.subject_for(DeadLettered, service=Service.UPGRADE_ORCHESTRATOR.value),
        ]
        for subject in forged:
            await a.nc.publish(subject, b"{}")
            assert await a.denied(subject), f"A published {subject}"
        # The agent-facing inventory command checks the credential against the cluster it names.
        report = ReportNodesRequest(
            cluster_id=fleet.ids["iso-b"], credential=fleet.clusters["iso-a"], nodes=[], reported_at=datetime.now(UTC)
        )
        raw = await a.nc.request(
            catalogue.subject_for(ReportNodesRequest), codec.encode(report), timeout=5,
            headers={H_SCHEMA: schema_id(ReportNodesRequest)},
        )  # fmt: skip
        decoded = codec.decode_reply(raw.data, ClusterReply)
        assert not decoded.ok and decoded.error is not None and decoded.error.code == "forbidden"
    finally:
        await a.nc.close()


async def test_wrong_or_missing_credentials_are_refused_at_connect(fleet: Fleet) -> None:
    attempts = [
        (permissions.cluster_user(fleet.ids["iso-b"]), fleet.clusters["iso-a"]),  # A's credential for B
        (permissions.cluster_user(fleet.ids["iso-a"]), fleet.clusters["iso-a"][:-4] + "beef"),  # forged
        ("", ""),
        ("admin", "not-the-password"),
        ("registration", fleet.clusters["iso-a"]),
        (permissions.join_user("x"), "abcdef.0123456789abcdef"),  # unknown join token
    ]
    for user, password in attempts:
        with pytest.raises((nats.errors.Error, OSError, TimeoutError)):
            agent = await connect(fleet.plain_url, user, password)
            await agent.nc.close()
        DENIED["count"] += 1


async def test_pending_and_joining_agents_may_only_join(fleet: Fleet) -> None:
    for user, password in (
        (permissions.cluster_user(fleet.ids["iso-pending"]), fleet.clusters["iso-pending"]),
        (permissions.join_user(uuid.uuid4().hex), fleet.clusters["token"]),
    ):
        agent = await connect(fleet.plain_url, user, password)
        try:
            await agent.nc.publish(subjects.heartbeat(fleet.ids["iso-pending"], NODE), b"{}")
            assert await agent.denied(subjects.heartbeat(fleet.ids["iso-pending"], NODE))
            await agent.nc.publish(subjects.command(Service.REGISTRATION, "nodes.report"), b"{}")
            assert await agent.denied(subjects.command(Service.REGISTRATION, "nodes.report"))
        finally:
            await agent.nc.close()


async def test_deregistering_kicks_the_clusters_open_connections_and_refuses_its_next_connect(fleet: Fleet) -> None:
    """Revocation is immediate: the grant lasts 10 minutes, the deregistered cluster's connections end now."""
    credential = fleet.clusters["iso-gone"]
    gone = fleet.ids["iso-gone"]
    first = await connect(fleet.plain_url, permissions.cluster_user(gone), credential)
    node = await connect_as_node(fleet, "iso-gone", NODE)
    bystander = await connect(fleet.plain_url, permissions.cluster_user(fleet.ids["iso-a"]), fleet.clusters["iso-a"])
    try:
        async with FlotillaClient(fleet.admin_url) as admin:
            await admin.request(
                Service.REGISTRATION,
                "clusters.deregister",
                DeregisterClusterRequest(cluster_id=gone),
                ClusterReply,
            )
        await eventually(
            lambda: first.nc.is_closed and node.nc.is_closed,
            "the deregistered cluster's connections to close",
            timeout_s=10,
        )
        await bystander.nc.flush(timeout=5)
        assert bystander.nc.is_connected, "another cluster's connection must stay open"
    finally:
        for agent in (first, node, bystander):
            await agent.nc.close()
    with pytest.raises(nats.errors.Error, match=r"(?i)authorization"):
        await connect(fleet.plain_url, permissions.cluster_user(fleet.ids["iso-gone"]), credential)
    DENIED["count"] += 1
    log = (fleet.state / "logs" / "registration.log").read_text()
    assert "deregistered" in log and "refused a bus connection" in log
