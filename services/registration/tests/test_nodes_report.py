"""Inventory reports speak for the credential's cluster only, name their nodes consistently and stay under the
node quota; anything else is answered with a code, stores nothing, and is counted and reported once per window."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from faststream.nats import TestNatsBroker
from registration_harness import Clock, Harness

from flotilla_contracts.subjects import Service
from flotilla_contracts.v1.agent import NodeFacts
from flotilla_contracts.v1.common import NodeRole
from flotilla_contracts.v1.registration import (
    ApproveClusterRequest,
    ClusterIdentity,
    ClusterReply,
    CreateTokenReply,
    CreateTokenRequest,
    GetClusterRequest,
    JoinReply,
    JoinRequest,
    ReportNodesReply,
    ReportNodesRequest,
)
from flotilla_registration.app import Settings
from flotilla_registration.handlers import Registration
from flotilla_runtime.bus import make_broker
from flotilla_runtime.commands import CommandRouter
from flotilla_runtime.metrics import Registry
from flotilla_runtime.migrations import load_migrations
from flotilla_runtime.store import Store
from flotilla_runtime.trust import RefusalLedger

LIMIT = 5
REFUSED = "security.MemberRefused/v1"


class Fleet(Harness):
    metrics: Registry

    async def refused(self) -> dict[str, float]:
        """`flotilla_member_refused_total` by reason, read from the /metrics text."""
        found = {}
        for line in (await self.metrics.render()).splitlines():
            if line.startswith("flotilla_member_refused_total{"):
                series, value = line.rsplit(" ", 1)
                found[series.split('reason="', 1)[1].rstrip('"}')] = float(value)
        return found

    async def refusals(self) -> list[tuple[str, dict[str, Any]]]:
        rows = await self.store.fetchall("SELECT subject, headers, payload FROM outbox ORDER BY seq")
        return [
            (row["subject"], msgspec.json.decode(row["payload"]))
            for row in rows
            if msgspec.json.decode(row["headers"])["Flotilla-Schema"] == REFUSED
        ]

    async def node_ids(self, cluster_id: str) -> list[str]:
        reply = await self.ok("clusters.get", GetClusterRequest(cluster_id=cluster_id), ClusterReply)
        return [n.facts.node_id for n in reply.nodes]


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    store = await Store.open(tmp_path / "registration.db", load_migrations("flotilla_registration", "registration"))
    clock = Clock()
    metrics = Registry()
    try:
        registration = Registration(
            store=store,
            credential_key=b"k" * 32,
            policy=None,
            clock=clock,
            ledger=RefusalLedger(Service.REGISTRATION.value, metrics, clock=lambda: clock().timestamp()),
            max_nodes_per_cluster=LIMIT,
        )
        router = CommandRouter(Service.REGISTRATION, max_message_bytes=Settings().max_message_bytes)
        registration.register(router)
        broker = make_broker("nats://127.0.0.1:1", "test")
        router.install(broker)
        async with TestNatsBroker(broker) as test_broker:
            fleet = Fleet(test_broker, store, clock, registration)
            fleet.metrics = metrics
            yield fleet
    finally:
        await store.close()


def node(name: str, node_id: str | None = None) -> NodeFacts:
    return NodeFacts(node_id=node_id or name, node_name=name, role=NodeRole.WORKER, kubelet_version="v1.29.6")


def identity_of(name: str) -> ClusterIdentity:
    return ClusterIdentity(uid=f"uid-{name}", name=name, kubernetes_version="v1.29.6")


async def member(h: Fleet, name: str, nodes: int = 2) -> JoinReply:
    token = (await h.ok("tokens.create", CreateTokenRequest(), CreateTokenReply)).token
    identity = identity_of(name)
    request = JoinRequest(
        request_id=uuid.uuid4().hex,
        token=token,
        identity=identity,
        nodes=[node(f"{name}-n{i}") for i in range(nodes)],
    )
    joined = await h.ok("join", request, JoinReply)
    await h.ok("clusters.approve", ApproveClusterRequest(cluster_id=joined.cluster_id), ClusterReply)
    return joined


def report(
    h: Fleet, joined: JoinReply, nodes: list[NodeFacts], cluster_id: str = "", complete: bool = False
) -> ReportNodesRequest:
    assert joined.credential is not None
    return ReportNodesRequest(
        cluster_id=cluster_id or joined.cluster_id,
        credential=joined.credential,
        nodes=nodes,
        complete=complete,
        reported_at=h.clock(),
    )


async def test_a_report_naming_another_cluster_stores_nothing_and_is_reported_once(fleet: Fleet) -> None:
    x, v = await member(fleet, "x"), await member(fleet, "v")
    before = await fleet.node_ids(v.cluster_id)
    for _ in range(3):
        error = await fleet.error("nodes.report", report(fleet, x, [node("v-n9")], cluster_id=v.cluster_id))
        assert error["code"] == "forbidden"
        assert f"this credential is for {x.cluster_id}, not {v.cluster_id}" in error["message"]
    assert await fleet.node_ids(v.cluster_id) == before
    assert await fleet.refused() == {"subject_body_mismatch": 3}
    found = await fleet.refusals()
    assert [(s, p["cluster_id"], p["reason"]) for s, p in found] == [
        (f"fleet.v1.evt.security.registration.{x.cluster_id}.refused", x.cluster_id, "subject_body_mismatch")
    ]


async def test_a_node_whose_id_is_not_its_names_token_is_refused(fleet: Fleet) -> None:
    x = await member(fleet, "x")
    error = await fleet.error("nodes.report", report(fleet, x, [node("x-n1"), node("x-n5", node_id="x-n0")]))
    assert (error["code"], error["details"]["field"]) == ("invalid_field", "nodes[1].node_id")
    assert await fleet.node_ids(x.cluster_id) == ["x-n0", "x-n1"]
    assert await fleet.refused() == {"subject_body_mismatch": 1}


async def test_the_node_quota_holds_for_reports_and_re_joins_and_the_cluster_keeps_what_it_had(fleet: Fleet) -> None:
    x = await member(fleet, "x", nodes=2)
    ok = await fleet.ok("nodes.report", report(fleet, x, [node(f"x-n{i}") for i in range(LIMIT)]), ReportNodesReply)
    assert ok.added == LIMIT - 2
    error = await fleet.error("nodes.report", report(fleet, x, [node("x-extra")]))
    assert (error["code"], error["details"]["limit"], error["details"]["nodes"]) == ("invalid_field", LIMIT, LIMIT + 1)
    assert "FLOTILLA_REGISTRATION_MAX_NODES_PER_CLUSTER" in error["message"]
    assert await fleet.node_ids(x.cluster_id) == [f"x-n{i}" for i in range(LIMIT)]
    rejoin = JoinRequest(
        request_id=uuid.uuid4().hex,
        credential=x.credential,
        identity=identity_of("x"),
        nodes=[node(f"x-n{i}") for i in range(LIMIT + 1)],
    )
    assert (await fleet.error("join", rejoin))["details"]["nodes"] == LIMIT + 1
    assert await fleet.node_ids(x.cluster_id) == [f"x-n{i}" for i in range(LIMIT)]
    assert await fleet.refused() == {"node_quota": 2}
    # A complete report that removes as many as it adds stays within the quota.
    swap = [node(f"x-n{i}") for i in range(1, LIMIT)] + [node("x-new")]
    swapped = await fleet.ok("nodes.report", report(fleet, x, swap, complete=True), ReportNodesReply)
    assert (swapped.added, swapped.removed) == (1, 1)
    assert await fleet.refused() == {"node_quota": 2}


async def test_a_first_join_over_the_quota_is_refused_without_a_member_to_charge(fleet: Fleet) -> None:
    token = (await fleet.ok("tokens.create", CreateTokenRequest(), CreateTokenReply)).token
    identity = ClusterIdentity(uid=str(uuid.uuid4()), name="big", kubernetes_version="v1.29.6")
    request = JoinRequest(
        request_id=uuid.uuid4().hex, token=token, identity=identity, nodes=[node(f"n{i}") for i in range(LIMIT + 1)]
    )
    error = await fleet.error("join", request)
    assert (error["code"], error["details"]["nodes"]) == ("invalid_field", LIMIT + 1)
    assert await fleet.refusals() == [] and await fleet.refused() == {}  # no member: nobody to count it against
