"""Heartbeat figures on /metrics, read at scrape time (nothing is added to the ingest hot path)."""

from __future__ import annotations

from flotilla_heartbeat.domain import HealthModel
from flotilla_heartbeat.ingest import Ingest
from flotilla_runtime.metrics import Family, Registry, Sample


def register_metrics(metrics: Registry, ingest: Ingest, model: HealthModel, owned: list[int]) -> None:
    """Ingest counters, drops by reason, and what this replica tracks."""
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
    metrics.gauge_fn(
        "flotilla_heartbeat_tracked_nodes",
        "Nodes whose health this replica tracks (its partitions).",
        lambda: sum(len(cluster.nodes) for cluster in model.clusters.values()),
    )
    metrics.gauge_fn(
        "flotilla_heartbeat_tracked_clusters", "Clusters this replica tracks.", lambda: len(model.clusters)
    )
    metrics.gauge_fn("flotilla_heartbeat_partitions_owned", "Partitions this replica owns.", lambda: len(owned))
