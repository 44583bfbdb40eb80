"""The pure health model: node and cluster health from heartbeats on the service's clock, damped against flapping.

No I/O and no clock of its own: callers pass `now` (monotonic seconds) and `wall` (epoch seconds). Heartbeats
are observed in batches (`begin`, then `observe` per heartbeat); `tick` turns what changed into transition
events. Worsening transitions are published at once; an improvement is published only when the entity has
stayed better for the flap window since its last worsening, so a flapping node yields at most one transition
pair per window, and its flapping shows as a `Flapping` condition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import msgspec

from flotilla_contracts.v1.common import ConditionStatus, NodeCondition, NodeConditionType
from flotilla_contracts.v1.heartbeat import (
    ClusterHealth,
    ClusterHealthChanged,
    Heartbeat,
    NodeHealth,
    NodeHealthChanged,
)
from flotilla_heartbeat.health_state import (
    API_NONE,
    CLUSTER_SEVERITY,
    COUNT_INDEX,
    LOST,
    NOT_READY,
    READY,
    SEVERITY,
    UNREACHABLE,
    Cluster,
    Facts,
    Node,
    Policy,
    Transition,
    api_state,
    cluster_verdict,
    counts_of,
    move_api,
    node_name_of,
    node_reason,
    reported_ready,
)


@dataclass
class HealthModel:
    """Every node and cluster of this replica's partitions; see the module docstring for the rules."""

    policy: Policy
    started: float
    wall_offset: float = 0.0  # wall - now, refreshed by `begin` / `tick`
    clusters: dict[str, Cluster] = field(default_factory=dict)
    _interned: dict[bytes, Facts] = field(default_factory=dict)
    _wheel: dict[int, list[Node]] = field(default_factory=dict)
    _next_slot: int = 0
    _queued_nodes: list[Node] = field(default_factory=list)
    _queued_clusters: list[Cluster] = field(default_factory=list)
    _cluster_wheel: dict[int, list[Cluster]] = field(default_factory=dict)
    _due: list[Node] = field(default_factory=list)
    _now: float = 0.0
    _lag: float = 0.0
    _wall: float = 0.0
    grace_until: float = 0.0
    checkpoint: set[tuple[str, str]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.grace_until = self.started + self.policy.startup_grace_s
        self._next_slot = self._slot(self.started)

    # --- membership -------------------------------------------------------------------------------
    def add_cluster(self, cluster_id: str) -> Cluster:
        cluster = self.clusters.get(cluster_id)
        if cluster is None:
            cluster = self.clusters[cluster_id] = Cluster(cluster_id)
        return cluster

    def remove_cluster(self, cluster_id: str) -> None:
        cluster = self.clusters.pop(cluster_id, None)
        for node in cluster.nodes.values() if cluster else ():
            node.removed = True

    def add_node(
        self, cluster_id: str, node_id: str, node_name: str, now: float, *, listed: bool = False
    ) -> Node | None:
        """A node tracked before its first heartbeat, Unreachable if it never sends one.

        `listed`: it comes from the cluster's inventory; once a cluster has one, only listed nodes are admitted.
        """
        cluster = self.clusters.get(cluster_id)
        if cluster is None:
            return None
        node = cluster.nodes.get(node_id)
        if node is None:
            node = self._new_node(cluster, node_id, node_name, now)
            self._schedule(node, now + self.policy.unreachable_after_s)
        if listed and not node.listed:
            node.listed = True
            cluster.listed += 1
        return node

    def remove_node(self, cluster_id: str, node_id: str) -> None:
        cluster = self.clusters.get(cluster_id)
        node = cluster.nodes.pop(node_id, None) if cluster else None
        if cluster is not None and node is not None:
            node.removed = True
            cluster.listed -= node.listed
            cluster.counts[COUNT_INDEX[node.state]] -= 1
            move_api(cluster, node.api, API_NONE)
            self._queue_cluster(cluster)

    def _new_node(self, cluster: Cluster, node_id: str, node_name: str, now: float) -> Node:
        name = None if node_name == node_id.replace("_", ".") else node_name
        node = cluster.nodes[node_id] = Node(cluster.cluster_id, node_id, name, created=now)
        cluster.counts[0] += 1
        return node

    # --- the hot path -----------------------------------------------------------------------------
    def begin(self, now: float, wall: float) -> None:
        """Start a batch: every heartbeat in it counts as received at `now`."""
        self._now, self._wall, self.wall_offset = now, wall, wall - now
        slot = self._slot(now + self.policy.unreachable_after_s) + 1
        due = self._wheel.get(slot)
        if due is None:
            due = self._wheel[slot] = []
        self._due = due

    def observe(self, hb: Heartbeat) -> bool:
        """Apply one heartbeat whose ids match its subject; False when its cluster is not tracked here."""
        cluster = self.clusters.get(hb.cluster_id)
        if cluster is None:
            return False
        node = cluster.nodes.get(hb.node_id)
        if node is None:
            node = self._new_node(cluster, hb.node_id, hb.node_name, self._now)
        facts = node.facts
        if (
            facts is None
            or hb.conditions != facts.conditions
            or hb.kubelet_version != facts.kubelet_version
            or hb.api_server != facts.api_server
            or hb.allocatable != facts.allocatable
            or hb.kube_proxy_version != facts.kube_proxy_version
            or hb.agent_version != facts.agent_version
            or hb.role is not facts.role
        ):
            node.facts = self._intern(hb)
            node.ready = reported_ready(hb.conditions)
            api = api_state(hb.api_server)
            if api != node.api:
                move_api(cluster, node.api, api)
                node.api = api
                self._queue_cluster(cluster)
            self.checkpoint.add((hb.cluster_id, hb.node_id))
        self.pulse(cluster, node, hb.seq, hb.sent_at.timestamp())
        return True

    def pulse(self, cluster: Cluster, node: Node, seq: int, sent_at: float) -> None:
        """A heartbeat of a tracked node whose facts are the ones it has (`observe` once they are applied)."""
        now = self._now
        node.heard = now
        cluster.last_heard = now
        node.seq = seq
        node.skew = self._wall - sent_at
        if node.state is not (READY if node.ready else NOT_READY) and not node.queued:
            node.queued = True
            self._queued_nodes.append(node)
        self._due.append(node)

    def _intern(self, hb: Heartbeat) -> Facts:
        facts = Facts(
            role=hb.role,
            kubelet_version=hb.kubelet_version,
            kube_proxy_version=hb.kube_proxy_version,
            agent_version=hb.agent_version,
            conditions=hb.conditions,
            api_server=hb.api_server,
            allocatable=hb.allocatable,
        )
        return self.intern(facts)

    def intern(self, facts: Facts) -> Facts:
        """The one object for these facts, shared by every node reporting them: the cheap way through
        (fastpath.py) takes a heartbeat only when its node's facts are that very object."""
        return self._interned.setdefault(msgspec.msgpack.encode(facts), facts)

    # --- evaluation -------------------------------------------------------------------------------
    def tick(self, now: float, wall: float, lag: float = 0.0) -> list[Transition]:
        """Evaluate what is due or changed; returns the transitions to publish, nodes first.

        `lag`: how far behind the stream we are reading; silence is judged as of `now - lag`.
        """
        self.wall_offset = wall - now
        self._lag = lag
        out: list[Transition] = []
        current = self._slot(now - lag)
        while self._next_slot <= current:
            for node in self._wheel.pop(self._next_slot, ()):
                if not node.removed and (
                    node.heard + self.policy.unreachable_after_s <= now - lag
                    or node.flapping
                    or node.state is not (READY if node.ready else NOT_READY)
                ):
                    self._evaluate_node(node, now, out)
            for cluster in self._cluster_wheel.pop(self._next_slot, ()):
                self._queue_cluster(cluster)
            self._next_slot += 1
        queued, self._queued_nodes = self._queued_nodes, []
        for node in queued:
            node.queued = False
            if not node.removed:
                self._evaluate_node(node, now, out)
        clusters, self._queued_clusters = self._queued_clusters, []
        for cluster in clusters:
            cluster.queued = False
            if self.clusters.get(cluster.cluster_id) is cluster:
                self._evaluate_cluster(cluster, now, out)
        return out

    @property
    def lag(self) -> float:
        """Seconds the last tick judged silence behind `now`: how far behind the heartbeat stream we read."""
        return self._lag

    def requeue(self, node: Node) -> None:
        """Evaluate this node at the next tick (after a restore)."""
        self._schedule(node, self._now)

    def hold(self, until: float) -> None:
        """Declare nothing Unreachable before `until` (after a restart, or when the service itself fell behind)."""
        self.grace_until = max(self.grace_until, until)

    def raw_state(self, node: Node, now: float) -> NodeHealth | None:
        """What the facts say right now, before damping."""
        heard = node.heard if node.heard >= 0 else node.created
        silent = now - self._lag - heard
        if silent >= self.policy.lost_after_s and node.heard >= 0:
            return LOST
        if silent >= self.policy.unreachable_after_s:
            return UNREACHABLE
        if node.heard < 0:
            return None
        return READY if node.ready else NOT_READY

    def _evaluate_node(self, node: Node, now: float, out: list[Transition]) -> None:
        policy = self.policy
        raw = self.raw_state(node, now)
        if raw in (UNREACHABLE, LOST) and now < self.grace_until:
            self._schedule(node, self.grace_until)
            return
        good = raw in (READY, None)
        if good != node.raw_good:
            node.raw_good = good
            if now - node.flip_start > policy.flap_window_s:
                node.flip_start, node.flips = now, 0
            node.flips += 1
            if node.flips >= policy.flap_flips and not node.flapping:
                node.flapping = True
                self.checkpoint.add((node.cluster_id, node.node_id))
        elif node.flapping and now - max(node.flip_start, node.last_worse) > policy.flap_window_s:
            node.flapping = False
            self.checkpoint.add((node.cluster_id, node.node_id))
        if node.flapping:
            self._schedule(node, max(node.flip_start, node.last_worse) + policy.flap_window_s)
        if raw == node.state or raw is None:
            if raw == UNREACHABLE:
                self._schedule(node, node.heard + policy.lost_after_s)
            return
        if SEVERITY[raw] < SEVERITY[node.state] and node.state is not None:
            hold_until = node.last_worse + policy.flap_window_s
            if now < hold_until:
                self._schedule(node, hold_until)
                return
        else:
            node.last_worse = now
        self._transition(node, raw, now, out)
        if raw == UNREACHABLE:
            self._schedule(node, node.heard + policy.lost_after_s if node.heard >= 0 else now + policy.lost_after_s)

    def _transition(self, node: Node, to: NodeHealth, now: float, out: list[Transition]) -> None:
        cluster = self.clusters[node.cluster_id]
        cluster.counts[COUNT_INDEX[node.state]] -= 1
        cluster.counts[COUNT_INDEX[to]] += 1
        reason, message = node_reason(node, to, now, self.policy)
        facts = node.facts
        out.append(
            NodeHealthChanged(
                cluster_id=node.cluster_id,
                node_id=node.node_id,
                node_name=node_name_of(node),
                from_=node.state,
                to=to,
                reason=reason,
                message=message,
                last_heartbeat_at=self.to_datetime(node.heard) if node.heard >= 0 else None,
                conditions=self.conditions(node),
                kubelet_version=facts.kubelet_version if facts else None,
                occurred_at=self.to_datetime(now),
            )
        )
        node.state, node.since, node.reason = to, now, reason
        self.checkpoint.add((node.cluster_id, node.node_id))
        self._queue_cluster(cluster)

    def _evaluate_cluster(self, cluster: Cluster, now: float, out: list[Transition]) -> None:
        state, reason, message = cluster_verdict(cluster)
        if state == cluster.state:
            cluster.reason, cluster.message = reason, message
            return
        if CLUSTER_SEVERITY[state] < CLUSTER_SEVERITY[cluster.state] and cluster.state is not None:
            hold_until = cluster.last_worse + self.policy.flap_window_s
            if now < hold_until:
                slot = max(self._slot(hold_until) + 1, self._next_slot + 1)
                self._cluster_wheel.setdefault(slot, []).append(cluster)
                return
        elif state is not ClusterHealth.UNKNOWN:
            cluster.last_worse = now
        out.append(
            ClusterHealthChanged(
                cluster_id=cluster.cluster_id,
                from_=cluster.state,
                to=state,
                reason=reason,
                message=message,
                last_heartbeat_at=self.to_datetime(cluster.last_heard) if cluster.last_heard >= 0 else None,
                nodes=counts_of(cluster),
                api_servers_ready=cluster.api_ready,
                api_servers_total=cluster.api_total,
                occurred_at=self.to_datetime(now),
            )
        )
        cluster.state, cluster.since, cluster.reason, cluster.message = state, now, reason, message

    # --- helpers ----------------------------------------------------------------------------------
    def _slot(self, at: float) -> int:
        return int(at / self.policy.resolution_s)

    def _schedule(self, node: Node, at: float) -> None:
        slot = max(self._slot(at) + 1, self._next_slot)
        self._wheel.setdefault(slot, []).append(node)

    def _queue_cluster(self, cluster: Cluster) -> None:
        if not cluster.queued:
            cluster.queued = True
            self._queued_clusters.append(cluster)

    def to_datetime(self, at: float) -> datetime:
        return datetime.fromtimestamp(at + self.wall_offset, UTC)

    def conditions(self, node: Node) -> list[NodeCondition]:
        """The node's reported conditions plus the two the service derives: Flapping and ClockSkew."""
        found = list(node.facts.conditions) if node.facts else []
        if node.flapping:
            found.append(
                NodeCondition(
                    type=NodeConditionType.FLAPPING,
                    status=ConditionStatus.TRUE,
                    reason="NodeFlapping",
                    message=f"{node.flips} health flips within {self.policy.flap_window_s:g}s",
                )
            )
        if abs(node.skew) > self.policy.skew_threshold_s:
            found.append(
                NodeCondition(
                    type=NodeConditionType.CLOCK_SKEW,
                    status=ConditionStatus.TRUE,
                    reason="ClockSkewed",
                    message=f"agent clock is {-node.skew:+.1f}s from the service's",
                )
            )
        return found
