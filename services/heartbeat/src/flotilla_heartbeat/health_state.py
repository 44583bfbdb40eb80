"""What the health model keeps per node and cluster, and the verdicts derived from it (pure, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from flotilla_contracts.v1.common import ConditionStatus, NodeCondition, NodeConditionType, NodeRole, Resources
from flotilla_contracts.v1.heartbeat import (
    ApiServerHealth,
    ClusterHealth,
    ClusterHealthChanged,
    NodeCounts,
    NodeHealth,
    NodeHealthChanged,
    ProbeResult,
)

READY, NOT_READY, UNREACHABLE, LOST = NodeHealth.READY, NodeHealth.NOT_READY, NodeHealth.UNREACHABLE, NodeHealth.LOST
SEVERITY: dict[NodeHealth | None, int] = {None: -1, READY: 0, NOT_READY: 1, UNREACHABLE: 2, LOST: 3}
CLUSTER_SEVERITY: dict[ClusterHealth | None, int] = {
    None: -1,
    ClusterHealth.UNKNOWN: 0,
    ClusterHealth.READY: 0,
    ClusterHealth.DEGRADED: 1,
    ClusterHealth.UNREACHABLE: 2,
}
API_NONE, API_READY, API_NOT_READY = 0, 1, 2


@dataclass(frozen=True)
class Policy:
    """Detection settings; `flap_window_s` is the hysteresis window (at most one transition pair per window)."""

    interval_s: float = 10.0
    missed_intervals: int = 3
    lost_after_s: float = 300.0
    skew_threshold_s: float = 30.0
    startup_grace_s: float = 30.0
    flap_window_s: float = 30.0
    flap_flips: int = 3  # raw good/bad flips within the window that make a node Flapping
    resolution_s: float = 0.25  # liveness deadlines are checked at this granularity

    @property
    def unreachable_after_s(self) -> float:
        return self.interval_s * self.missed_intervals


class Facts(msgspec.Struct, frozen=True, gc=False):
    """What a node reports besides liveness; interned, so nodes reporting the same facts share one object."""

    role: NodeRole
    kubelet_version: str
    kube_proxy_version: str | None
    agent_version: str
    conditions: list[NodeCondition]
    api_server: ApiServerHealth | None
    allocatable: Resources | None


class Node(msgspec.Struct, gc=False):
    """One tracked node; compact on purpose (a million of these must fit in a few hundred MB)."""

    cluster_id: str
    node_id: str
    node_name: str | None = None  # None: the node token with '_' as '.'
    facts: Facts | None = None
    state: NodeHealth | None = None
    since: float = 0.0  # service clock of the last published transition
    reason: str = ""
    heard: float = -1.0  # service clock of the last heartbeat; -1: never
    created: float = 0.0
    seq: int = 0
    skew: float = 0.0
    ready: bool = False
    api: int = API_NONE
    raw_good: bool = False
    last_worse: float = -1e18
    flips: int = 0
    flip_start: float = 0.0
    flapping: bool = False
    queued: bool = False
    removed: bool = False
    listed: bool = False  # in the cluster's inventory (registration's NodeAdded), not only heard from


class Cluster(msgspec.Struct, gc=False):
    """One member cluster in this replica's partitions, with incrementally kept counts."""

    cluster_id: str
    nodes: dict[str, Node] = msgspec.field(default_factory=dict)
    state: ClusterHealth | None = None
    since: float = 0.0
    reason: str = ""
    message: str = ""
    counts: list[int] = msgspec.field(default_factory=lambda: [0, 0, 0, 0, 0])  # None, Ready, NotReady, Unr., Lost
    api_total: int = 0
    api_ready: int = 0
    last_heard: float = -1.0
    last_worse: float = -1e18
    queued: bool = False
    listed: int = 0  # inventory nodes known here; above 0, a node outside the inventory is refused
    tokens: float = -1.0  # heartbeat rate bucket (flotilla_heartbeat.quota); -1: full, not used yet
    refilled: float = 0.0  # service clock of the bucket's last refill


# Where a node state is counted in `Cluster.counts` (None: tracked, not yet judged).
COUNT_INDEX: dict[NodeHealth | None, int] = {None: 0, READY: 1, NOT_READY: 2, UNREACHABLE: 3, LOST: 4}
Transition = NodeHealthChanged | ClusterHealthChanged


def node_name_of(node: Node) -> str:
    """The node's Kubernetes name (stored only when it differs from the token with '_' read as '.')."""
    return node.node_name if node.node_name is not None else node.node_id.replace("_", ".")


def reported_ready(conditions: list[NodeCondition]) -> bool:
    """A node is Ready as reported when its Ready condition is True (Kubernetes semantics)."""
    for condition in conditions:
        if condition.type is NodeConditionType.READY:
            return condition.status is ConditionStatus.TRUE
    return False


def api_state(api: ApiServerHealth | None) -> int:
    """API_NONE (no API server on the node), API_READY (readyz and livez OK) or API_NOT_READY."""
    if api is None:
        return API_NONE
    return API_READY if api.readyz is ProbeResult.OK and api.livez is ProbeResult.OK else API_NOT_READY


def move_api(cluster: Cluster, old: int, new: int) -> None:
    """Keep the cluster's API server counts right when one node's API state goes from `old` to `new`."""
    cluster.api_total += (new != API_NONE) - (old != API_NONE)
    cluster.api_ready += (new == API_READY) - (old == API_READY)


def counts_of(cluster: Cluster) -> NodeCounts:
    """The cluster's node counts by state, as events and replies carry them."""
    c = cluster.counts
    return NodeCounts(ready=c[1], not_ready=c[2], unreachable=c[3], lost=c[4])


def cluster_verdict(cluster: Cluster) -> tuple[ClusterHealth, str, str]:
    """A cluster's health from its node counts and API servers, with a reason and a message."""
    _, ready, not_ready, unreachable, lost = cluster.counts
    heard = ready + not_ready
    if heard + unreachable + lost == 0:
        return ClusterHealth.UNKNOWN, "NoNodeReported", "no node has reported yet"
    if heard == 0:
        return ClusterHealth.UNREACHABLE, "NoNodeHeard", f"none of {unreachable + lost} nodes heard within the grace"
    api_bad = cluster.api_total - cluster.api_ready
    if not_ready or unreachable or lost or api_bad:
        parts = [
            f"{n} {label}" for n, label in ((not_ready, "NotReady"), (unreachable, "Unreachable"), (lost, "Lost")) if n
        ]
        if api_bad:
            parts.append(f"{api_bad} of {cluster.api_total} API servers not ready")
        reason = "NodesNotReady" if not_ready or unreachable or lost else "ApiServerNotReady"
        return ClusterHealth.DEGRADED, reason, "; ".join(parts)
    return ClusterHealth.READY, "AllNodesReady", f"{ready} nodes Ready"


def node_reason(node: Node, to: NodeHealth, now: float, policy: Policy) -> tuple[str, str]:
    """The reason and message of a node's transition to `to`, as its event carries them."""
    if to is UNREACHABLE:
        silent = now - (node.heard if node.heard >= 0 else node.created)
        return "HeartbeatsMissed", f"no heartbeat for {silent:.1f}s ({policy.missed_intervals} intervals missed)"
    if to is LOST:
        return "NodeLost", f"no heartbeat for {now - node.heard:.0f}s (lost after {policy.lost_after_s:g}s)"
    if to is NOT_READY:
        return "KubeletNotReady", "the node reports Ready=False or Unknown"
    return "KubeletReady", "heartbeats on time and the node reports Ready"
