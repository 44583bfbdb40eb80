"""The join flow a cluster agent sees: tokens, approval, credentials, idempotency and identity safety."""

from __future__ import annotations

import uuid

from registration_harness import Harness

from flotilla_contracts.v1.agent import NodeFacts
from flotilla_contracts.v1.common import NodeRole
from flotilla_contracts.v1.registration import (
    ApproveClusterRequest,
    ClusterIdentity,
    ClusterReply,
    ClusterState,
    CreateTokenReply,
    CreateTokenRequest,
    DeregisterClusterRequest,
    JoinReply,
    JoinRequest,
    RejectClusterRequest,
    RevokeTokenReply,
    RevokeTokenRequest,
)


def nodes(count: int, version: str = "v1.29.6") -> list[NodeFacts]:
    return [
        NodeFacts(
            node_id=f"node-{i}",
            node_name=f"node-{i}",
            role=NodeRole.CONTROL_PLANE if i == 0 else NodeRole.WORKER,
            kubelet_version=version,
        )
        for i in range(count)
    ]


def identity(name: str = "prod-eu-1", uid: str | None = None, **labels: str) -> ClusterIdentity:
    return ClusterIdentity(
        uid=uid or str(uuid.uuid4()), name=name, labels=labels, kubernetes_version="v1.29.6", region="eu-west-1"
    )


def join(token: str | None, who: ClusterIdentity, *, credential: str | None = None, count: int = 3) -> JoinRequest:
    return JoinRequest(
        request_id=uuid.uuid4().hex, token=token, credential=credential, identity=who, nodes=nodes(count)
    )


async def token(h: Harness, **options: object) -> str:
    return (await h.ok("tokens.create", CreateTokenRequest(**options), CreateTokenReply)).token  # type: ignore[arg-type]


async def test_join_waits_for_approval_then_approval_emits_events(harness: Harness) -> None:
    secret = await token(harness)
    reply = await harness.ok("join", join(secret, identity()), JoinReply)
    assert reply.state is ClusterState.PENDING
    assert reply.credential and reply.credential.startswith("fc1.")
    assert "flotilla clusters approve" in reply.reason
    approved = await harness.ok("clusters.approve", ApproveClusterRequest(cluster_id=reply.cluster_id), ClusterReply)
    assert approved.cluster.state is ClusterState.APPROVED
    schemas = [schema for _, schema in await harness.events()]
    assert schemas == [
        "registration.TokenCreated/v1",
        "registration.ClusterJoinRequested/v1",
        "registration.NodeAdded/v1",
        "registration.NodeAdded/v1",
        "registration.NodeAdded/v1",
        "registration.ClusterApproved/v1",
    ]


async def test_a_second_approval_is_a_conflict(harness: Harness) -> None:
    reply = await harness.ok("join", join(await token(harness), identity()), JoinReply)
    await harness.ok("clusters.approve", ApproveClusterRequest(cluster_id=reply.cluster_id), ClusterReply)
    error = await harness.error("clusters.approve", ApproveClusterRequest(cluster_id=reply.cluster_id))
    assert error["code"] == "conflict"
    assert "it is Approved" in error["message"]


async def test_auto_approve_token_and_its_labels(harness: Harness) -> None:
    secret = await token(harness, auto_approve=True, labels={"env": "prod"})
    reply = await harness.ok("join", join(secret, identity(tier="gold")), JoinReply)
    assert reply.state is ClusterState.APPROVED
    got = await harness.ok("clusters.get", ApproveClusterRequest(cluster_id=reply.cluster_id), ClusterReply)
    assert got.cluster.labels == {"env": "prod", "tier": "gold"}
    assert got.cluster.approved_by == "token"
    assert [n.facts.node_id for n in got.nodes] == ["node-0", "node-1", "node-2"]


async def test_policy_selector_approves_matching_clusters(harness: Harness) -> None:
    from flotilla_kube.selectors import parse_selector

    harness.registration.policy = parse_selector("env in (dev, test)")
    secret = await token(harness)
    dev = await harness.ok("join", join(secret, identity("dev-1", env="dev")), JoinReply)
    prod = await harness.ok("join", join(secret, identity("prod-1", env="prod")), JoinReply)
    assert (dev.state, prod.state) == (ClusterState.APPROVED, ClusterState.PENDING)


async def test_repeating_a_join_returns_the_same_cluster(harness: Harness) -> None:
    request = join(await token(harness, max_uses=1), identity())
    first = await harness.ok("join", request, JoinReply)
    again = await harness.ok("join", request, JoinReply)  # same request id, token now used up: still answered
    assert again == first
    count = await harness.store.fetchone("SELECT COUNT(*) FROM clusters")
    assert count is not None and count[0] == 1


async def test_rejoin_with_credential_keeps_id_and_updates_nodes(harness: Harness) -> None:
    who = identity()
    first = await harness.ok("join", join(await token(harness), who), JoinReply)
    again = await harness.ok("join", join(None, who, credential=first.credential, count=2), JoinReply)
    assert (again.cluster_id, again.rejoined, again.credential) == (first.cluster_id, True, first.credential)
    got = await harness.ok("clusters.get", ApproveClusterRequest(cluster_id=first.cluster_id), ClusterReply)
    assert got.cluster.node_count == 2
    assert [schema for _, schema in await harness.events()][-2:] == [
        "registration.NodeRemoved/v1",
        "registration.ClusterRejoined/v1",
    ]


async def test_the_same_identity_with_a_token_is_refused_while_it_is_a_member(harness: Harness) -> None:
    who = identity()
    secret = await token(harness)
    first = await harness.ok("join", join(secret, who), JoinReply)
    error = await harness.error("join", join(secret, who))
    assert error["code"] == "already_exists"
    assert first.cluster_id in error["message"]


async def test_another_identity_under_a_taken_name_is_refused_until_deregistered(harness: Harness) -> None:
    secret = await token(harness)
    old = await harness.ok("join", join(secret, identity("shared-name")), JoinReply)
    error = await harness.error("join", join(secret, identity("shared-name")))
    assert error["code"] == "identity_conflict"
    assert f"flotilla clusters deregister {old.cluster_id}" in error["message"]
    await harness.ok("clusters.deregister", DeregisterClusterRequest(cluster_id=old.cluster_id), ClusterReply)
    new = await harness.ok("join", join(secret, identity("shared-name")), JoinReply)
    assert new.cluster_id != old.cluster_id


async def test_a_deregistered_credential_stops_working_and_rejoin_is_a_new_membership(harness: Harness) -> None:
    who = identity()
    secret = await token(harness)
    first = await harness.ok("join", join(secret, who), JoinReply)
    await harness.ok("clusters.deregister", DeregisterClusterRequest(cluster_id=first.cluster_id), ClusterReply)
    error = await harness.error("join", join(None, who, credential=first.credential))
    assert error["code"] == "unauthorized"
    assert "deregistered" in error["message"]
    second = await harness.ok("join", join(secret, who), JoinReply)
    assert second.membership == 2
    assert second.credential != first.credential


async def test_forged_or_foreign_credentials_are_refused(harness: Harness) -> None:
    secret = await token(harness)
    a = await harness.ok("join", join(secret, identity("a")), JoinReply)
    assert a.credential
    forged = a.credential[:-4] + "0000"
    assert (await harness.error("join", join(None, identity("a"), credential=forged)))["code"] == "unauthorized"
    foreign = await harness.error("join", join(None, identity("b"), credential=a.credential))
    assert foreign["code"] == "unauthorized"


async def test_token_refusals_say_why(harness: Harness) -> None:
    who = identity()
    assert (await harness.error("join", join("nope", who)))["code"] == "token_invalid"
    assert (await harness.error("join", join("abcdef.0123456789abcdef", who)))["code"] == "token_invalid"
    once = await token(harness, max_uses=1)
    await harness.ok("join", join(once, identity("used")), JoinReply)
    assert (await harness.error("join", join(once, who)))["code"] == "token_exhausted"
    short = await token(harness, ttl_s=60)
    harness.clock.advance(61)
    expired = await harness.error("join", join(short, who))
    assert expired["code"] == "token_expired"
    revoked_token = await token(harness)
    info = await harness.ok("tokens.revoke", RevokeTokenRequest(token_id=revoked_token.split(".")[0]), RevokeTokenReply)
    assert info.info.state == "Revoked"
    assert (await harness.error("join", join(revoked_token, who)))["code"] == "token_revoked"


async def test_rejected_cluster_learns_the_reason_on_its_next_join(harness: Harness) -> None:
    who = identity()
    first = await harness.ok("join", join(await token(harness), who), JoinReply)
    await harness.ok(
        "clusters.reject", RejectClusterRequest(cluster_id=first.cluster_id, reason="unknown datacenter"), ClusterReply
    )
    again = await harness.ok("join", join(None, who, credential=first.credential), JoinReply)
    assert (again.state, again.reason) == (ClusterState.REJECTED, "unknown datacenter")


async def test_bad_join_input_gets_codes_naming_the_field(harness: Harness) -> None:
    base = {"request_id": "r1", "token": "abcdef.0123456789abcdef"}
    good_identity = {"uid": "u1", "name": "c1", "kubernetes_version": "v1.29.6"}
    cases = [
        ({**base, "request_id": "r.1", "identity": good_identity}, "invalid_id", "request_id"),
        ({**base, "identity": {**good_identity, "name": "Bad_Name"}}, "invalid_field", "identity.name"),
        ({**base, "identity": {**good_identity, "labels": {"bad key!": "x"}}}, "invalid_field", "identity.labels"),
        ({**base, "identity": {**good_identity, "labels": {f"k{i}": "v" for i in range(65)}}}, "invalid_field", ""),
        ({**base, "identity": {**good_identity, "kubernetes_version": "latest"}}, "invalid_field", ""),
    ]
    for body, code, field in cases:
        error = await harness.error("join", body)
        assert error["code"] == code, body
        assert field in error["details"].get("field", ""), (body, error)


async def test_listing_sees_every_write_even_between_pages(harness: Harness) -> None:
    from flotilla_contracts.v1.registration import LabelClusterRequest, ListClustersReply, ListClustersRequest

    secret = await token(harness)
    ids = [(await harness.ok("join", join(secret, identity(f"c{i}")), JoinReply)).cluster_id for i in range(3)]
    page = await harness.ok("clusters.list", ListClustersRequest(limit=2), ListClustersReply)
    assert [c.identity.name for c in page.clusters] == ["c0", "c1"]
    await harness.ok(
        "clusters.label", LabelClusterRequest(cluster_id=ids[2], set_labels={"tier": "gold"}), ClusterReply
    )
    rest = await harness.ok("clusters.list", ListClustersRequest(limit=2, cursor=page.next_cursor), ListClustersReply)
    assert [(c.identity.name, c.labels.get("tier")) for c in rest.clusters] == [("c2", "gold")]
    gold = await harness.ok("clusters.list", ListClustersRequest(selector="tier=gold"), ListClustersReply)
    assert [c.cluster_id for c in gold.clusters] == [ids[2]]


async def test_a_join_between_listings_costs_the_next_listing_one_cluster_not_all(harness: Harness) -> None:
    """At 10,000 clusters joining at once every write dropped the decoded list, so each page of each `clusters
    list` decoded every cluster again; now a listing reads back only the clusters written since the last one."""
    from flotilla_contracts.v1.registration import ListClustersReply, ListClustersRequest

    secret = await token(harness)
    for i in range(20):
        await harness.ok("join", join(secret, identity(f"c{i:02d}")), JoinReply)
    first = await harness.ok("clusters.list", ListClustersRequest(limit=5), ListClustersReply)
    assert first.total == 20
    cache = harness.registration.cache
    before = cache.decoded
    await harness.ok("join", join(secret, identity("c99")), JoinReply)
    for _ in range(3):
        again = await harness.ok("clusters.list", ListClustersRequest(limit=100), ListClustersReply)
    assert again.total == 21 and again.clusters[-1].identity.name == "c99"
    assert cache.decoded - before == 1, "only the cluster that joined was decoded again"


async def test_a_token_lifetime_no_date_can_hold_is_invalid_field_naming_its_range(harness: Harness) -> None:
    for ttl in (1e12, 10 * 365 * 86400 + 1):
        error = await harness.error("tokens.create", {"ttl_s": ttl})
        assert (error["code"], error["details"]["field"]) == ("invalid_field", "ttl_s"), ttl
        assert "at most 315360000 seconds" in error["message"] and "null" in error["message"]
    longest = await harness.ok("tokens.create", CreateTokenRequest(ttl_s=10 * 365 * 86400), CreateTokenReply)
    assert longest.info.expires_at is not None
    assert [schema for _, schema in await harness.events()] == ["registration.TokenCreated/v1"]
