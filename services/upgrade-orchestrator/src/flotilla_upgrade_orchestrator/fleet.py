"""The orchestrator's read model of the fleet: clusters, nodes, versions and health, fed by events only.

Registration's lifecycle and inventory events and heartbeat's health transitions are folded into these
plain values (`apply_*`); nothing here does I/O. The store keeps them so a restart needs no replay.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

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
    api_server_version: str | None = None  # control-plane nodes, when the inventory reports it
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
    health_since: datetime | None = None  # its last health event's time (as the scheduler keeps it), for the
    # disruption rule: an Unreachable cluster whose nodes then go Lost counts from that later event
    api_servers_ready: int = 0
    api_servers_total: int = 0
    nodes: dict[str, FleetNode] = {}

    @property
    def member(self) -> bool:
        return self.state is ClusterState.APPROVED


def node_from_facts(
    facts: NodeFacts, previous: FleetNode | None = None, changed: Sequence[str] | None = None
) -> FleetNode:
    """Inventory facts to a fleet node; health from heartbeat (if known) wins over the reported condition.

    `changed` (a NodeChanged's fields, None for all): a version the event did not change keeps what we know,
    which may be newer (a verify report) than an inventory report still on its way.
    """
    ready = next((c.status for c in facts.conditions if c.type is NodeConditionType.READY), None)
    health = previous.health if previous is not None else NodeHealth.READY
    if previous is None and ready is ConditionStatus.FALSE:
        health = NodeHealth.NOT_READY
    return FleetNode(
        node_id=facts.node_id,
        node_name=facts.node_name,
        role=facts.role,
        kubelet_version=_kept(facts.kubelet_version, previous, changed, "kubelet_version"),
        kube_proxy_version=facts.kube_proxy_version,
        api_server_version=facts.api_server_version,
        unschedulable=facts.unschedulable,
        health=health,
    )


def _kept(reported: str, previous: FleetNode | None, changed: Sequence[str] | None, name: str) -> str:
    if previous is None or changed is None or name in changed:
        return reported
    return str(getattr(previous, name))


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


def apply_node(
    fleet: dict[str, FleetCluster], cluster_id: str, facts: NodeFacts, changed: Sequence[str] | None = None
) -> FleetCluster:
    cluster = fleet.get(cluster_id)
    if cluster is None:
        cluster = fleet[cluster_id] = FleetCluster(cluster_id=cluster_id)
    cluster.nodes[facts.node_id] = node_from_facts(facts, cluster.nodes.get(facts.node_id), changed)
    return cluster
