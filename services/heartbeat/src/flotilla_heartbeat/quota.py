"""What one member cluster may make this replica track and how fast it may speak (pure rules, O(1) a message).

A heartbeat is admitted before it is decoded, from its subject's tokens alone (the server's grant restricts
them to the sender's own cluster), in this order:

1. a node already tracked passes to the rate check;
2. a new node of a cluster whose inventory is known here (registration's `NodeAdded`) is refused as
   `unknown_node`: only the inventory's nodes are tracked;
3. a new node of a cluster without a known inventory is tracked up to `max_nodes`, then refused as
   `node_quota` (the hard backstop: invented names cannot grow memory, the checkpoint or the event stream);
4. every admitted heartbeat takes a token from its cluster's bucket, refilled at `headroom` heartbeats per
   tracked node per announced interval (at least `min_nodes` nodes' worth, so a cluster that is still coming
   up is not starved) and holding `burst_intervals` intervals of that; an empty bucket refuses `rate_limited`.

Refusing invented nodes before the rate check keeps a flood of names from eating the bucket its real nodes
need: a cluster that floods with names stays Ready; one that floods as its own nodes loses heartbeats only
beyond the headroom.
"""

from __future__ import annotations

from dataclasses import dataclass

from flotilla_contracts.v1.security import RefusalReason
from flotilla_heartbeat.health_state import Cluster

UNKNOWN_NODE, NODE_QUOTA, RATE_LIMITED = (
    RefusalReason.UNKNOWN_NODE,
    RefusalReason.NODE_QUOTA,
    RefusalReason.RATE_LIMITED,
)


@dataclass(frozen=True)
class Quota:
    """The per-cluster bounds; `interval_s` is the heartbeat interval the service announces to agents."""

    max_nodes: int = 5000
    interval_s: float = 10.0
    headroom: float = 3.0
    burst_intervals: float = 2.0
    min_nodes: int = 64

    def admit(self, cluster: Cluster, node_id: str, now: float) -> RefusalReason | None:
        """None when a heartbeat from `node_id` may be applied at `now`, else why not (see the module docstring)."""
        nodes = cluster.nodes
        if node_id not in nodes:
            if cluster.listed > 0:
                return UNKNOWN_NODE
            if len(nodes) >= self.max_nodes:
                return NODE_QUOTA
        per_s = max(len(nodes), self.min_nodes) * self.headroom / self.interval_s
        capacity = per_s * self.interval_s * self.burst_intervals
        tokens = cluster.tokens
        tokens = capacity if tokens < 0 else min(capacity, tokens + (now - cluster.refilled) * per_s)
        cluster.refilled = now
        if tokens < 1.0:
            cluster.tokens = tokens
            return RATE_LIMITED
        cluster.tokens = tokens - 1.0
        return None

    def admits_listed(self, cluster: Cluster, node_id: str) -> bool:
        """Whether an inventory node may be tracked: one already tracked always, a new one within `max_nodes`."""
        return node_id in cluster.nodes or len(cluster.nodes) < self.max_nodes
