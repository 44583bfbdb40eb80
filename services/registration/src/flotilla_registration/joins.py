"""Joins, re-joins and node reports: each one transaction that commits the cluster, its nodes and its events."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import msgspec

from flotilla_contracts.catalogue import subject_for
from flotilla_contracts.errors import ErrorCode
from flotilla_contracts.v1.agent import NodeFacts
from flotilla_contracts.v1.registration import (
    ClusterInfo,
    ClusterState,
    JoinReply,
    JoinRequest,
    NodeInfo,
    ReportNodesReply,
    ReportNodesRequest,
)
from flotilla_contracts.v1.registration_events import (
    ClusterApproved,
    ClusterJoinRequested,
    ClusterRejoined,
    ClusterVersionChanged,
    NodeAdded,
    NodeChanged,
    NodeRemoved,
)
from flotilla_kube.selectors import Selector
from flotilla_registration import domain, inventory, versions
from flotilla_registration import store as repo
from flotilla_runtime.errors import RequestError
from flotilla_runtime.store import SyncTx


@dataclass(frozen=True)
class JoinContext:
    now: datetime
    credential_key: bytes
    policy: Selector | None
    max_nodes: int = inventory.DEFAULT_MAX_NODES_PER_CLUSTER


def join(tx: SyncTx, request: JoinRequest, ctx: JoinContext) -> JoinReply:
    """First join with a token, or re-join with the credential; the same request id returns the same answer."""
    prior = repo.prior_join(tx, request.request_id)
    if prior is not None:
        if prior["uid"] != request.identity.uid:
            raise RequestError(
                ErrorCode.CONFLICT,
                f"request id {request.request_id} was already used by another cluster identity; use a new one",
                field="request_id",
            )
        cluster = repo.get_cluster(tx, prior["cluster_id"])
        assert cluster is not None  # join_requests rows always point at a cluster
        return _reply(cluster, ctx.credential_key, rejoined=bool(prior["rejoined"]))
    if request.credential:
        reply = _rejoin(tx, request, request.credential, ctx)
    elif request.token:
        reply = _first_join(tx, request, request.token, ctx)
    else:
        raise RequestError(
            ErrorCode.INVALID_FIELD,
            "a join needs `token` (first join) or `credential` (a cluster that joined before)",
            field="token",
        )
    repo.record_join(tx, request.request_id, reply.cluster_id, request.identity.uid, reply.rejoined)
    return reply


def _reply(cluster: ClusterInfo, key: bytes, *, rejoined: bool) -> JoinReply:
    live = cluster.state is not ClusterState.DEREGISTERED
    return JoinReply(
        cluster_id=cluster.cluster_id,
        state=cluster.state,
        credential=domain.derive_credential(key, cluster.cluster_id, cluster.membership) if live else None,
        reason=domain.join_reason(cluster.state, cluster),
        rejoined=rejoined,
        membership=cluster.membership,
    )


def _first_join(tx: SyncTx, request: JoinRequest, token: str, ctx: JoinContext) -> JoinReply:
    identity, now = request.identity, ctx.now
    token_id, secret = domain.split_token(token)
    found = repo.get_token(tx, token_id)
    info = domain.check_token(found[0] if found else None, found[1] if found else "", secret, now)
    live = repo.live_cluster_by_uid(tx, identity.uid)
    if live is not None:
        raise RequestError(
            ErrorCode.ALREADY_EXISTS,
            f"this cluster (uid {identity.uid}) is already a member as {live.cluster_id} ({live.state.value}); "
            "its agents must join with its credential, or deregister it to join anew",
            cluster_id=live.cluster_id,
        )
    holder = repo.live_cluster_by_name(tx, identity.name)
    if holder is not None:
        raise RequestError(
            ErrorCode.IDENTITY_CONFLICT,
            f"the name {identity.name!r} belongs to another cluster ({holder.cluster_id}, uid {holder.identity.uid}); "
            f"deregister it (`flotilla clusters deregister {holder.cluster_id}`) or join under another name",
            cluster_id=holder.cluster_id,
        )
    labels = domain.initial_labels(identity.labels, info.labels)
    state, source = domain.initial_state(token_auto_approve=info.auto_approve, policy=ctx.policy, labels=labels)
    inventory.check_node_names("", request.nodes)  # no member yet: answered, not counted against a cluster
    inventory.check_node_quota("", len(request.nodes), ctx.max_nodes)
    cluster_id = domain.new_cluster_id(identity.name)
    while repo.get_cluster(tx, cluster_id) is not None:
        cluster_id = domain.new_cluster_id(identity.name)
    diff = domain.diff_nodes({}, request.nodes, [], complete=False)
    cluster = ClusterInfo(
        cluster_id=cluster_id,
        identity=identity,
        state=state,
        membership=repo.memberships_of(tx, identity.uid) + 1,
        labels=labels,
        node_count=len(diff.added),
        token_id=info.token_id,
        approved_by=source,
        agent_version=request.agent_version,
        joined_at=now,
        approved_at=now if source else None,
        updated_at=now,
    )
    repo.save_cluster(tx, cluster)
    repo.update_token(tx, msgspec.structs.replace(info, uses=info.uses + 1))
    repo.save_nodes(tx, [NodeInfo(cluster_id=cluster_id, facts=f, added_at=now, updated_at=now) for f in diff.added])
    tx.emit(
        subject_for(ClusterJoinRequested, cluster_id=cluster_id), ClusterJoinRequested(cluster=cluster, occurred_at=now)
    )
    if source is not None:
        tx.emit(
            subject_for(ClusterApproved, cluster_id=cluster_id),
            ClusterApproved(cluster=cluster, approved_by=source, occurred_at=now),
        )
    _emit_node_events(tx, cluster_id, diff, now)
    return _reply(cluster, ctx.credential_key, rejoined=False)


def _rejoin(tx: SyncTx, request: JoinRequest, credential: str, ctx: JoinContext) -> JoinReply:
    identity, now = request.identity, ctx.now
    cluster = authenticate(tx, credential, ctx.credential_key)
    if cluster.identity.uid != identity.uid:
        raise RequestError(
            ErrorCode.UNAUTHORIZED, "this credential belongs to another cluster identity", field="credential"
        )
    if identity.name != cluster.identity.name:
        holder = repo.live_cluster_by_name(tx, identity.name)
        if holder is not None and holder.cluster_id != cluster.cluster_id:
            raise RequestError(
                ErrorCode.IDENTITY_CONFLICT,
                f"cannot rename to {identity.name!r}: cluster {holder.cluster_id} holds that name",
                cluster_id=holder.cluster_id,
            )
    inventory.check_node_names(cluster.cluster_id, request.nodes)
    known = repo.nodes_of(tx, cluster.cluster_id)
    diff = domain.diff_nodes(repo.node_facts(known), request.nodes, [], complete=bool(request.nodes))
    inventory.check_node_quota(cluster.cluster_id, len(known) + len(diff.added) - len(diff.removed), ctx.max_nodes)
    cluster = msgspec.structs.replace(
        cluster,
        identity=identity,
        agent_version=request.agent_version or cluster.agent_version,
        node_count=len(known) + len(diff.added) - len(diff.removed),
        updated_at=now,
    )
    previous = cluster.identity.kubernetes_version
    cluster = _versioned(cluster, known, diff, now)  # the version the nodes report, not the one the agent joined with
    repo.save_cluster(tx, cluster)
    _apply_node_diff(tx, cluster.cluster_id, known, diff, now)
    tx.emit(
        subject_for(ClusterRejoined, cluster_id=cluster.cluster_id), ClusterRejoined(cluster=cluster, occurred_at=now)
    )
    _version_changed(tx, cluster, previous, now)
    return _reply(cluster, ctx.credential_key, rejoined=True)


def authenticate(tx: SyncTx, credential: str, key: bytes) -> ClusterInfo:
    """The cluster a credential belongs to; UNAUTHORIZED when it is unknown, forged or deregistered."""
    cluster_id = domain.credential_cluster(credential)
    cluster = repo.get_cluster(tx, cluster_id) if cluster_id else None
    if cluster is None or not domain.credential_matches(key, credential, cluster):
        raise RequestError(ErrorCode.UNAUTHORIZED, "credential not recognised by this fleet", field="credential")
    if cluster.state is ClusterState.DEREGISTERED:
        raise RequestError(
            ErrorCode.UNAUTHORIZED,
            f"cluster {cluster.cluster_id} was deregistered and its credential no longer works; "
            "join again with a valid join token (a new membership)",
            field="credential",
        )
    return cluster


def report_nodes(
    tx: SyncTx,
    request: ReportNodesRequest,
    key: bytes,
    now: datetime,
    max_nodes: int = inventory.DEFAULT_MAX_NODES_PER_CLUSTER,
) -> ReportNodesReply:
    """An agent's inventory report: diffed against what we know; only real changes become events.

    The credential says which cluster speaks; a body naming another cluster, a node whose id is not its name's
    token, or an inventory over `max_nodes` is refused whole (inventory.MemberRefusal) and stores nothing."""
    cluster = authenticate(tx, request.credential, key)
    inventory.check_speaker(cluster.cluster_id, request.cluster_id)
    if cluster.state is ClusterState.REJECTED:
        raise RequestError(ErrorCode.FORBIDDEN, f"cluster {cluster.cluster_id} was rejected: {cluster.reason}")
    inventory.check_node_names(cluster.cluster_id, request.nodes)
    known = repo.nodes_of(tx, cluster.cluster_id)
    diff = domain.diff_nodes(repo.node_facts(known), request.nodes, request.removed, request.complete)
    count = len(known) + len(diff.added) - len(diff.removed)
    inventory.check_node_quota(cluster.cluster_id, count, max_nodes)
    _apply_node_diff(tx, cluster.cluster_id, known, diff, now)
    previous = cluster.identity.kubernetes_version
    updated = _versioned(msgspec.structs.replace(cluster, node_count=count), known, diff, now)
    if updated != cluster:
        repo.save_cluster(tx, msgspec.structs.replace(updated, updated_at=now))
        _version_changed(tx, updated, previous, now)
    return ReportNodesReply(added=len(diff.added), changed=len(diff.changed), removed=len(diff.removed))


def _versioned(cluster: ClusterInfo, known: dict[str, NodeInfo], diff: domain.NodeDiff, now: datetime) -> ClusterInfo:
    """The cluster with the version its inventory reports after `diff` (the oldest API server), if any."""
    facts = repo.node_facts(known)
    facts.update((f.node_id, f) for f in [*diff.added, *(f for f, _ in diff.changed), *diff.unchanged])
    for gone in diff.removed:
        facts.pop(gone.node_id, None)
    reported = versions.reported_version(facts.values())
    if reported is None or reported == cluster.identity.kubernetes_version:
        return cluster
    identity = msgspec.structs.replace(cluster.identity, kubernetes_version=reported)
    return msgspec.structs.replace(cluster, identity=identity, updated_at=now)


def _version_changed(tx: SyncTx, cluster: ClusterInfo, previous: str, now: datetime) -> None:
    if cluster.identity.kubernetes_version != previous:
        tx.emit(
            subject_for(ClusterVersionChanged, cluster_id=cluster.cluster_id),
            ClusterVersionChanged(cluster=cluster, previous=previous, occurred_at=now),
        )


def _apply_node_diff(
    tx: SyncTx, cluster_id: str, known: dict[str, NodeInfo], diff: domain.NodeDiff, now: datetime
) -> None:
    def saved(facts: NodeFacts) -> NodeInfo:
        old = known.get(facts.node_id)
        return NodeInfo(cluster_id=cluster_id, facts=facts, added_at=old.added_at if old else now, updated_at=now)

    touched = diff.added + [facts for facts, _ in diff.changed] + diff.unchanged
    repo.save_nodes(tx, [saved(facts) for facts in touched])
    repo.delete_nodes(tx, cluster_id, [facts.node_id for facts in diff.removed])
    _emit_node_events(tx, cluster_id, diff, now)


def _emit_node_events(tx: SyncTx, cluster_id: str, diff: domain.NodeDiff, now: datetime) -> None:
    for facts in diff.added:
        tx.emit(
            subject_for(NodeAdded, cluster_id=cluster_id, node_id=facts.node_id),
            NodeAdded(cluster_id=cluster_id, node=facts, occurred_at=now),
        )
    for facts, fields in diff.changed:
        tx.emit(
            subject_for(NodeChanged, cluster_id=cluster_id, node_id=facts.node_id),
            NodeChanged(cluster_id=cluster_id, node=facts, changed_fields=fields, occurred_at=now),
        )
    for facts in diff.removed:
        tx.emit(
            subject_for(NodeRemoved, cluster_id=cluster_id, node_id=facts.node_id),
            NodeRemoved(cluster_id=cluster_id, node_id=facts.node_id, node_name=facts.node_name, occurred_at=now),
        )
