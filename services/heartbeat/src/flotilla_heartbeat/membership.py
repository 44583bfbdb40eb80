"""Membership read model, fed only by registration's lifecycle events (never by asking registration)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flotilla_contracts import subjects
from flotilla_contracts.v1.heartbeat import NoiseReason
from flotilla_contracts.v1.registration import ClusterInfo, ClusterState
from flotilla_contracts.v1.registration_events import (
    ClusterApproved,
    ClusterDeregistered,
    ClusterJoinRequested,
    ClusterRejected,
    ClusterRejoined,
    NodeAdded,
    NodeRemoved,
)
from flotilla_contracts.v1.security import RefusalReason
from flotilla_heartbeat import store as tables
from flotilla_heartbeat.domain import HealthModel
from flotilla_heartbeat.quota import Quota
from flotilla_runtime.consumers import EventHandler, EventMeta
from flotilla_runtime.store import Tx
from flotilla_runtime.trust import RefusalLedger

_NOISE = {
    ClusterState.PENDING: NoiseReason.PENDING_CLUSTER,
    ClusterState.REJECTED: NoiseReason.REJECTED_CLUSTER,
    ClusterState.DEREGISTERED: NoiseReason.DEREGISTERED_CLUSTER,
}
CLUSTER_EVENTS = (ClusterJoinRequested, ClusterApproved, ClusterRejected, ClusterRejoined, ClusterDeregistered)


class Membership:
    """Cluster states for the whole fleet (small); nodes and health only for the partitions owned here."""

    def __init__(
        self,
        model: HealthModel,
        owned: tuple[int, ...],
        count: int,
        now: Callable[[], float],
        *,
        quota: Quota | None = None,
        ledger: RefusalLedger | None = None,
    ) -> None:
        self.model = model
        self.quota = quota or Quota()
        self.ledger = ledger
        self.owned = frozenset(owned)
        self.count = count
        self.now = now
        self.states: dict[str, ClusterState] = {}

    def owns(self, cluster_id: str) -> bool:
        return subjects.partition_of(cluster_id, self.count) in self.owned

    def noise_reason(self, cluster_id: str) -> NoiseReason:
        state = self.states.get(cluster_id)
        return _NOISE.get(state, NoiseReason.UNKNOWN_CLUSTER) if state else NoiseReason.UNKNOWN_CLUSTER

    def apply_state(self, cluster_id: str, state: ClusterState) -> None:
        """In memory only: the cluster joins or leaves the health model."""
        self.states[cluster_id] = state
        if state is ClusterState.APPROVED and self.owns(cluster_id):
            self.model.add_cluster(cluster_id)
        elif state is not ClusterState.APPROVED:
            self.model.remove_cluster(cluster_id)

    async def on_cluster(self, event: Any, tx: Tx, meta: EventMeta) -> None:
        cluster: ClusterInfo = event.cluster
        await tables.set_member(tx, cluster.cluster_id, cluster.state.value, event.occurred_at.isoformat())
        if cluster.state is not ClusterState.APPROVED:
            await tables.forget_cluster(tx, cluster.cluster_id)
        self.apply_state(cluster.cluster_id, cluster.state)

    async def on_node_added(self, event: NodeAdded, tx: Tx, meta: EventMeta) -> None:
        if not self.owns(event.cluster_id):
            return
        cluster = self.model.clusters.get(event.cluster_id)
        if cluster is not None and not self.quota.admits_listed(cluster, event.node.node_id):
            await self._refuse_over_quota(tx, event)
            return
        await tables.add_inventory(tx, event.cluster_id, event.node.node_id, event.node.node_name)
        self.model.add_node(event.cluster_id, event.node.node_id, event.node.node_name, self.now(), listed=True)

    async def _refuse_over_quota(self, tx: Tx, event: NodeAdded) -> None:
        """An inventory past the node quota: the node is not tracked (nor stored); counted, reported per window."""
        if self.ledger is None:
            return
        detail = (
            f"the cluster already has {self.quota.max_nodes} nodes tracked (FLOTILLA_HEARTBEAT_MAX_NODES_PER_CLUSTER)"
        )
        refused = self.ledger.refuse(event.cluster_id, RefusalReason.NODE_QUOTA, node=event.node.node_id, detail=detail)
        if refused is not None:
            await tx.emit(self.ledger.subject_for(refused), refused)

    async def on_node_removed(self, event: NodeRemoved, tx: Tx, meta: EventMeta) -> None:
        if not self.owns(event.cluster_id):
            return
        await tables.remove_inventory(tx, event.cluster_id, event.node_id)
        self.model.remove_node(event.cluster_id, event.node_id)

    def handlers(self) -> dict[type[Any], EventHandler]:
        found: dict[type[Any], EventHandler] = {event: self.on_cluster for event in CLUSTER_EVENTS}
        found[NodeAdded] = self.on_node_added
        found[NodeRemoved] = self.on_node_removed
        return found

    def filters(self) -> list[str]:
        return [subjects.entity_events(subjects.Entity.CLUSTER), subjects.entity_events(subjects.Entity.NODE)]
