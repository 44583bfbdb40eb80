"""Cluster administration: approve, reject, label, taint, deregister, host keys, get and list."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import msgspec

from flotilla_contracts.catalogue import subject_for
from flotilla_contracts.errors import ErrorCode
from flotilla_contracts.v1.agent import HostKeysSet
from flotilla_contracts.v1.registration import (
    ApprovalSource,
    ClusterInfo,
    ClusterReply,
    ClusterState,
    LabelClusterRequest,
    SetHostKeysReply,
    SetHostKeysRequest,
    TaintClusterRequest,
)
from flotilla_contracts.v1.registration_events import (
    ClusterApproved,
    ClusterDeregistered,
    ClusterLabelsChanged,
    ClusterRejected,
    ClusterTaintsChanged,
)
from flotilla_kube.selectors import Selector
from flotilla_registration import domain
from flotilla_registration import store as repo
from flotilla_runtime.errors import RequestError
from flotilla_runtime.store import SyncTx

_LIVE = (ClusterState.PENDING, ClusterState.APPROVED, ClusterState.REJECTED)


def existing(tx: SyncTx, cluster_id: str) -> ClusterInfo:
    cluster = repo.get_cluster(tx, cluster_id)
    if cluster is None:
        raise RequestError(
            ErrorCode.NOT_FOUND,
            f"no cluster {cluster_id}; `flotilla clusters list` shows the fleet",
            field="cluster_id",
        )
    return cluster


def get(tx: SyncTx, cluster_id: str) -> ClusterReply:
    cluster = existing(tx, cluster_id)
    nodes = sorted(repo.nodes_of(tx, cluster_id).values(), key=lambda node: node.facts.node_id)
    return ClusterReply(cluster=cluster, nodes=nodes)


def approve(tx: SyncTx, cluster_id: str, now: datetime) -> ClusterReply:
    cluster = existing(tx, cluster_id)
    domain.require_state(cluster, [ClusterState.PENDING], "approve")
    cluster = msgspec.structs.replace(
        cluster, state=ClusterState.APPROVED, approved_by=ApprovalSource.ADMIN, approved_at=now, updated_at=now
    )
    repo.save_cluster(tx, cluster)
    tx.emit(
        subject_for(ClusterApproved, cluster_id=cluster_id),
        ClusterApproved(cluster=cluster, approved_by=ApprovalSource.ADMIN, occurred_at=now),
    )
    return ClusterReply(cluster=cluster)


def reject(tx: SyncTx, cluster_id: str, reason: str, now: datetime) -> ClusterReply:
    cluster = existing(tx, cluster_id)
    domain.require_state(cluster, [ClusterState.PENDING], "reject")
    cluster = msgspec.structs.replace(cluster, state=ClusterState.REJECTED, reason=reason, updated_at=now)
    repo.save_cluster(tx, cluster)
    tx.emit(
        subject_for(ClusterRejected, cluster_id=cluster_id),
        ClusterRejected(cluster=cluster, reason=reason, occurred_at=now),
    )
    return ClusterReply(cluster=cluster)


def label(tx: SyncTx, request: LabelClusterRequest, now: datetime) -> ClusterReply:
    cluster = existing(tx, request.cluster_id)
    domain.require_state(cluster, _LIVE, "label")
    labels = domain.edit_labels(cluster.labels, request.set_labels, request.remove_keys)
    if labels == cluster.labels:
        return ClusterReply(cluster=cluster)
    previous = cluster.labels
    cluster = msgspec.structs.replace(cluster, labels=labels, updated_at=now)
    repo.save_cluster(tx, cluster)
    tx.emit(
        subject_for(ClusterLabelsChanged, cluster_id=cluster.cluster_id),
        ClusterLabelsChanged(
            cluster=cluster,
            previous=previous,
            set_labels={k: v for k, v in request.set_labels.items() if previous.get(k) != v},
            removed_keys=[k for k in request.remove_keys if k in previous],
            occurred_at=now,
        ),
    )
    return ClusterReply(cluster=cluster)


def taint(tx: SyncTx, request: TaintClusterRequest, now: datetime) -> ClusterReply:
    cluster = existing(tx, request.cluster_id)
    domain.require_state(cluster, _LIVE, "taint")
    taints, added, removed = domain.edit_taints(cluster.taints, request.add, request.remove, now)
    if not added and not removed:
        return ClusterReply(cluster=cluster)
    cluster = msgspec.structs.replace(cluster, taints=taints, updated_at=now)
    repo.save_cluster(tx, cluster)
    tx.emit(
        subject_for(ClusterTaintsChanged, cluster_id=cluster.cluster_id),
        ClusterTaintsChanged(cluster=cluster, added=added, removed=removed, occurred_at=now),
    )
    return ClusterReply(cluster=cluster)


def deregister(tx: SyncTx, cluster_id: str, reason: str, now: datetime) -> ClusterReply:
    cluster = existing(tx, cluster_id)
    domain.require_state(cluster, _LIVE, "deregister")
    cluster = msgspec.structs.replace(
        cluster, state=ClusterState.DEREGISTERED, reason=reason, deregistered_at=now, updated_at=now
    )
    repo.save_cluster(tx, cluster)
    repo.forget_node_keys(tx, cluster_id)
    tx.emit(
        subject_for(ClusterDeregistered, cluster_id=cluster_id),
        ClusterDeregistered(cluster=cluster, reason=reason, occurred_at=now),
    )
    return ClusterReply(cluster=cluster)


def set_host_keys(tx: SyncTx, request: SetHostKeysRequest, now: datetime) -> SetHostKeysReply:
    cluster = existing(tx, request.cluster_id)
    domain.require_state(cluster, [ClusterState.PENDING, ClusterState.APPROVED], "set host keys of")
    revision = repo.host_keys_revision(tx, cluster.cluster_id) + 1
    repo.save_host_keys(tx, cluster.cluster_id, revision, list(request.keys))
    tx.emit(
        subject_for(HostKeysSet, cluster_id=cluster.cluster_id),
        HostKeysSet(cluster_id=cluster.cluster_id, revision=revision, keys=request.keys, occurred_at=now),
    )
    return SetHostKeysReply(cluster_id=cluster.cluster_id, revision=revision, key_count=len(request.keys))


def select(clusters: Sequence[ClusterInfo], selector: Selector, states: Sequence[ClusterState]) -> list[ClusterInfo]:
    """Clusters in the given states (all but Deregistered when none) whose labels match, by name then id."""
    wanted = set(states) or set(_LIVE)
    chosen = [c for c in clusters if c.state in wanted and selector.matches(c.labels)]
    return sorted(chosen, key=lambda c: (c.identity.name, c.cluster_id))
