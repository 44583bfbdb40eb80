"""A cluster's version follows the API servers its agents report, not the version it joined with."""

from __future__ import annotations

import msgspec
import test_nodes_report
from test_nodes_report import Fleet, identity_of, member, report

from flotilla_contracts.v1.agent import NodeFacts
from flotilla_contracts.v1.common import NodeRole
from flotilla_contracts.v1.registration import (
    ClusterReply,
    GetClusterRequest,
    JoinReply,
    JoinRequest,
    ReportNodesReply,
)

fleet = test_nodes_report.fleet  # the fixture: a registration service on a TestNatsBroker
CHANGED = "registration.ClusterVersionChanged/v1"


def cp(name: str, api_server: str | None, kubelet: str = "v1.29.6") -> NodeFacts:
    return NodeFacts(
        node_id=name,
        node_name=name,
        role=NodeRole.CONTROL_PLANE,
        kubelet_version=kubelet,
        api_server_version=api_server,
    )


def worker(name: str, kubelet: str) -> NodeFacts:
    return NodeFacts(node_id=name, node_name=name, role=NodeRole.WORKER, kubelet_version=kubelet)


async def version(h: Fleet, cluster_id: str) -> str:
    reply = await h.ok("clusters.get", GetClusterRequest(cluster_id=cluster_id), ClusterReply)
    return reply.cluster.identity.kubernetes_version


async def changes(h: Fleet) -> list[tuple[str, str]]:
    rows = await h.store.fetchall("SELECT headers, payload FROM outbox ORDER BY seq")
    return [
        (d["previous"], d["cluster"]["identity"]["kubernetes_version"])
        for row in rows
        if msgspec.json.decode(row["headers"])["Flotilla-Schema"] == CHANGED
        for d in [msgspec.json.decode(row["payload"])]
    ]


async def test_the_cluster_version_is_the_oldest_api_server_reported(fleet: Fleet) -> None:
    joined = await member(fleet, "alpha", nodes=0)
    nodes = [cp("cp-a", "v1.29.6"), cp("cp-b", "v1.29.6"), worker("w", "v1.29.6")]
    await fleet.ok("nodes.report", report(fleet, joined, nodes), ReportNodesReply)
    assert await version(fleet, joined.cluster_id) == "v1.29.6" and await changes(fleet) == []

    # One API server upgraded: the cluster is still at its oldest; both upgraded: it moves, once, with an event.
    nodes[0] = cp("cp-a", "v1.30.4", "v1.30.4")
    await fleet.ok("nodes.report", report(fleet, joined, nodes), ReportNodesReply)
    assert await version(fleet, joined.cluster_id) == "v1.29.6"
    nodes[1] = cp("cp-b", "v1.30.4", "v1.30.4")
    await fleet.ok("nodes.report", report(fleet, joined, nodes), ReportNodesReply)
    await fleet.ok("nodes.report", report(fleet, joined, nodes), ReportNodesReply)
    assert await version(fleet, joined.cluster_id) == "v1.30.4"
    assert await changes(fleet) == [("v1.29.6", "v1.30.4")]

    # A control plane reported back at an older version (a restored node): the cluster follows it down.
    nodes[1] = cp("cp-b", "v1.29.6")
    await fleet.ok("nodes.report", report(fleet, joined, nodes), ReportNodesReply)
    assert await version(fleet, joined.cluster_id) == "v1.29.6"
    assert (await changes(fleet))[-1] == ("v1.30.4", "v1.29.6")


async def test_a_rejoin_takes_the_version_its_nodes_report_over_the_one_it_claims(fleet: Fleet) -> None:
    joined = await member(fleet, "beta", nodes=0)
    assert joined.credential is not None
    request = JoinRequest(
        request_id="rejoin-1",
        credential=joined.credential,
        identity=identity_of("beta"),  # claims v1.29.6
        nodes=[cp("cp", None, kubelet="v1.30.4"), worker("w", "v1.30.4")],  # no API server version: its kubelet
    )
    await fleet.ok("join", request, JoinReply)
    assert await version(fleet, joined.cluster_id) == "v1.30.4"
    assert await changes(fleet) == [("v1.29.6", "v1.30.4")]


async def test_a_cluster_without_a_control_plane_node_keeps_its_version(fleet: Fleet) -> None:
    joined = await member(fleet, "gamma", nodes=0)
    await fleet.ok("nodes.report", report(fleet, joined, [worker("w", "v1.30.4")]), ReportNodesReply)
    assert await version(fleet, joined.cluster_id) == "v1.29.6" and await changes(fleet) == []
