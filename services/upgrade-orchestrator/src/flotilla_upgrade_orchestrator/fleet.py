"""The orchestrator's read model of the fleet: clusters, nodes, versions and health, fed by events only.

Registration's lifecycle and inventory events and heartbeat's health transitions are folded into these
plain values (`apply_*`); nothing here does I/O. The store keeps them so a restart needs no replay.
"""

from __future__ import annotations

import msgspec

from flotilla_contracts.v1.agent import NodeFacts
from flotilla_contracts.v1.common import ConditionStatus, NodeConditionType, NodeRole
from flotilla_contracts.v1.heartbeat import ClusterHealth, NodeHealth
from flotilla_contracts.v1.registration import ClusterInfo, ClusterState


class FleetNode(msgspec.Struct, kw_only=True):
    """A node as the orchestrator knows it: role, kubelet version, whether it can take pods."""

    node_id: str
    node_name: str
    role: NodeRole
    kubelet_version: str
    kube_proxy_version: str | None = None  # when the inventory reports it
    unschedulable: bool = False
    health: NodeHealth = NodeHealth.READY

    @property
    def available(self) -> bool:
        """Counts as up for I1: Ready and schedulable (a node cordoned by anyone is unavailable)."""
        return self.health is NodeHealth.READY and not self.unschedulable


class FleetCluster(msgspec.Struct, kw_only=True):
    """A member cluster: labels for selectors and windows, membership state, health, nodes."""

    cluster_id: str
    name: str = ""
    state: ClusterState = ClusterState.PENDING
    labels: dict[str, str] = {}
    kubernetes_version: str = ""
    health: ClusterHealth = ClusterHealth.UNKNOWN
    api_servers_ready: int = 0
    api_servers_total: int = 0
    nodes: dict[str, FleetNode] = {}

    @property
    def member(self) -> bool:
        return self.state is ClusterState.APPROVED


def node_from_facts(facts: NodeFacts, previous: FleetNode | None = None) -> FleetNode:
    """Inventory facts to a fleet node; health from heartbeat (if known) wins over the reported condition."""
    ready = next((c.status for c in facts.conditions if c.type is NodeConditionType.READY), None)
    health = previous.health if previous is not None else NodeHealth.READY
    if previous is None and ready is ConditionStatus.FALSE:
        health = NodeHealth.NOT_READY
    return FleetNode(
        node_id=facts.node_id,
        node_name=facts.node_name,
        role=facts.role,
        kubelet_version=facts.kubelet_version,
        kube_proxy_version=facts.kube_proxy_version,
        unschedulable=facts.unschedulable,
        health=health,
    )


def apply_cluster_info(fleet: dict[str, FleetCluster], info: ClusterInfo) -> FleetCluster:
    """A lifecycle event's snapshot of the cluster; nodes and health are kept."""
    cluster = fleet.get(info.cluster_id)
    if cluster is None:
        cluster = fleet[info.cluster_id] = FleetCluster(cluster_id=info.cluster_id)
    cluster.name = info.identity.name
    cluster.state = info.state
    cluster.labels = dict(info.labels)
    cluster.kubernetes_version = info.identity.kubernetes_version
    if info.state is ClusterState.DEREGISTERED:
        cluster.nodes = {}
    return cluster


def apply_node(fleet: dict[str, FleetCluster], cluster_id: str, facts: NodeFacts) -> FleetCluster:
    cluster = fleet.get(cluster_id)
    if cluster is None:
        cluster = fleet[cluster_id] = FleetCluster(cluster_id=cluster_id)
    cluster.nodes[facts.node_id] = node_from_facts(facts, cluster.nodes.get(facts.node_id))
    return cluster
