"""Heartbeat figures on /metrics, read at scrape time (nothing is added to the ingest hot path)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from flotilla_contracts.v1.heartbeat import ClusterHealth
from flotilla_heartbeat.domain import HealthModel
from flotilla_heartbeat.health_state import COUNT_INDEX
from flotilla_heartbeat.ingest import Ingest
from flotilla_runtime.metrics import Family, Registry, Sample

UNKNOWN = "Unknown"  # tracked, not judged yet (no heartbeat since the replica started)


def register_metrics(
    metrics: Registry, ingest: Ingest, model: HealthModel, owned: list[int], *, bus_drops: Callable[[], int] = int
) -> None:
    """Ingest counters, drops by reason, lag, and what this replica tracks by health."""
    metrics.collector(lambda: health_families(model), ["flotilla_heartbeat_nodes", "flotilla_heartbeat_clusters"])
    metrics.gauge_fn(
        "flotilla_heartbeat_lag_seconds",
        "How far behind the heartbeat stream this replica reads (silence is judged that much later; 5 s at most).",
        lambda: model.lag,
    )
    metrics.gauge_fn(
        "flotilla_heartbeat_backlog_messages",
        "Heartbeats received by the client and not yet applied (a sign the replica is behind).",
        lambda: ingest.backlog,
    )
    metrics.counter_fn(
        "flotilla_heartbeats_received_total",
        "Heartbeats received by this replica, valid or not (rate() of it is the ingest rate).",
        lambda: ingest.received,
    )
    metrics.counter_fn(
        "flotilla_heartbeats_applied_total", "Heartbeats applied to the health model.", lambda: ingest.applied
    )
    metrics.collector(
        lambda: [
            Family(
                "flotilla_heartbeats_dropped_total",
                "counter",
                "Heartbeats dropped, by reason (a stable error code or a membership reason).",
                [Sample({"reason": str(reason)}, n) for reason, n in ingest.dropped.items()],
            )
        ],
        ["flotilla_heartbeats_dropped_total"],
    )
    metrics.counter_fn(
        "flotilla_heartbeat_slow_consumer_drops_total",
        "Heartbeats dropped before this replica read them (its subscription's pending limits were full); no node is "
        "judged Unreachable until the startup grace after the last one.",
        bus_drops,
    )
    metrics.gauge_fn(
        "flotilla_heartbeat_tracked_nodes",
        "Nodes whose health this replica tracks (its partitions).",
        lambda: sum(len(cluster.nodes) for cluster in model.clusters.values()),
    )
    metrics.gauge_fn(
        "flotilla_heartbeat_tracked_clusters", "Clusters this replica tracks.", lambda: len(model.clusters)
    )
    metrics.gauge_fn("flotilla_heartbeat_partitions_owned", "Partitions this replica owns.", lambda: len(owned))


def health_families(model: HealthModel) -> list[Family]:
    """Nodes and clusters of this replica's partitions by health, from the counts each cluster keeps."""
    clusters = list(model.clusters.values())
    nodes = [sum(column) for column in zip(*(c.counts for c in clusters), strict=True)] or [0] * len(COUNT_INDEX)
    by_health = Counter(cluster.state.value if cluster.state else UNKNOWN for cluster in clusters)
    node_labels = {index: (state.value if state else UNKNOWN) for state, index in COUNT_INDEX.items()}
    return [
        Family(
            "flotilla_heartbeat_nodes",
            "gauge",
            f"Nodes this replica tracks, by health ({UNKNOWN}: not judged yet). Sum over replicas for the fleet.",
            [Sample({"health": node_labels[index]}, n) for index, n in enumerate(nodes)],
        ),
        Family(
            "flotilla_heartbeat_clusters",
            "gauge",
            "Clusters this replica tracks, by health. Sum over replicas for the fleet.",
            [Sample({"health": health.value}, by_health.get(health.value, 0)) for health in ClusterHealth],
        ),
    ]
