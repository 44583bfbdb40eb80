"""Least-privilege bus, node by node: a node's agent (the cluster credential and the node's own key) speaks only
for its node, the cluster agent for no node, members answer no discovery and no service command, and a node
login must prove a node of the inventory with its bound key."""

from __future__ import annotations

from collections.abc import Iterator

import nats
import nats.errors
import pytest

from flotilla_contracts import permissions, subjects
from flotilla_contracts.streams import FLEET_AGENT, agent_consumer
from flotilla_contracts.subjects import Service

from .bus_isolation_support import (
    DENIED,
    NODE,
    OTHER,
    Fleet,
    connect,
    connect_as_node,
    isolated_fleet,
    new_seed,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    yield from isolated_fleet(tmp_path_factory)


async def test_a_node_speaks_only_for_itself_and_the_cluster_agent_for_no_node(fleet: Fleet) -> None:
    """Per-node identity: n1 cannot act as n2 (heartbeat, step events, commands, inbox), and the cluster agent,
    which anyone holding the cluster credential can be, can act as no node."""
    a_id = fleet.ids["iso-a"]
    n1 = await connect_as_node(fleet, "iso-a", NODE)
    agent = await connect(fleet.plain_url, permissions.cluster_user(a_id), fleet.clusters["iso-a"])
    try:
        n2_consumer, n2_filter = agent_consumer(a_id, OTHER), subjects.agent_commands_for(a_id, OTHER)
        n1_consumer, n1_filter = agent_consumer(a_id, NODE), subjects.agent_commands_for(a_id, NODE)
        for who, connection, node, consumer, command_filter in (
            ("n1", n1, OTHER, n2_consumer, n2_filter),
            ("the cluster agent", agent, NODE, n1_consumer, n1_filter),
        ):
            for subject in (
                subjects.heartbeat(a_id, node),
                f"fleet.v1.evt.node-step.{a_id}.{node}.reported",
                f"$JS.API.CONSUMER.MSG.NEXT.{FLEET_AGENT.name}.{consumer}",
                f"$JS.API.CONSUMER.CREATE.{FLEET_AGENT.name}.{consumer}.{command_filter}",
                # Not even its own: a node's consumer is the hub's to create (flotilla_runtime.agent_consumers).
                f"$JS.API.CONSUMER.CREATE.{FLEET_AGENT.name}.{n1_consumer}.{n1_filter}",
            ):
                await connection.nc.publish(subject, b"{}", reply=connection.nc.new_inbox())
                assert await connection.denied(subject), f"{who} used {subject}"
            for inbox in (f"_INBOX.c.{a_id}.{node}.>", command_filter):
                await connection.nc.subscribe(inbox)
                assert await connection.denied(inbox), f"{who} subscribed to {inbox}"
        # The cluster agent's role is not a node's: no inventory, no joins, no applied reports from n1.
        for subject in (
            subjects.command(Service.REGISTRATION, "nodes.report"),
            subjects.command(Service.REGISTRATION, "join"),
            f"fleet.v1.evt.applied.{a_id}.s1.reported",
        ):
            await n1.nc.publish(subject, b"{}", reply=n1.nc.new_inbox())
            assert await n1.denied(subject), f"n1 used {subject}"
    finally:
        await n1.nc.close()
        await agent.nc.close()


async def test_members_answer_no_discovery_and_no_service_command(fleet: Fleet) -> None:
    """A member cannot pose as a service: `$SRV` and service command subjects are not theirs to subscribe to."""
    n1 = await connect_as_node(fleet, "iso-b", NODE)
    agent = await connect(fleet.plain_url, permissions.cluster_user(fleet.ids["iso-b"]), fleet.clusters["iso-b"])
    try:
        for who, connection in (("a node", n1), ("the cluster agent", agent)):
            for subject in (
                "$SRV.PING",
                "$SRV.>",
                "$SRV.INFO.registration",
                subjects.command(Service.NODE_AGENT, "info"),
                subjects.command(Service.REGISTRATION, "clusters.list"),
            ):
                await connection.nc.subscribe(subject)
                assert await connection.denied(subject), f"{who} subscribed to {subject}"
    finally:
        await n1.nc.close()
        await agent.nc.close()


async def test_a_node_login_proves_a_node_of_the_inventory_with_its_bound_key(fleet: Fleet) -> None:
    b_id = fleet.ids["iso-b"]
    await (await connect_as_node(fleet, "iso-b", OTHER)).nc.close()  # binds n2 to its key (first login)
    refused = {
        "not in the inventory": lambda: connect_as_node(fleet, "iso-b", "n99"),
        "the cluster agent's consumer is no node": lambda: connect_as_node(fleet, "iso-b", "_cluster"),
        "a second key for a bound node": lambda: connect_as_node(fleet, "iso-b", OTHER, seed=new_seed()),
        "no key": lambda: connect(fleet.plain_url, permissions.cluster_user(b_id, OTHER), fleet.clusters["iso-b"]),
    }
    for what, attempt in refused.items():
        with pytest.raises(nats.errors.Error, match=r"(?i)authorization"):
            agent = await attempt()
            await agent.nc.close()
            pytest.fail(f"a node login with {what} was let in")
        DENIED["count"] += 1
    again = await connect_as_node(fleet, "iso-b", OTHER)  # the bound key still gets in
    await again.nc.flush(timeout=5)
    await again.nc.close()
    log = (fleet.state / "logs" / "registration.log").read_text()
    assert "is not in the cluster's inventory" in log and "is bound to key" in log
