"""What an operator alerts on, on /metrics: replicas that found no cluster, subscriptions, placements, clusters.

Read at scrape time from the engine's records (a snapshot of its dicts first), so placement pays nothing.
"""

from __future__ import annotations

from flotilla_runtime.metrics import Family, Registry, Sample
from flotilla_scheduler.engine import Engine

METRICS = (
    "flotilla_scheduler_unplaced_replicas",
    "flotilla_scheduler_subscriptions",
    "flotilla_scheduler_placements",
    "flotilla_scheduler_clusters",
)


def families(engine: Engine) -> list[Family]:
    subs = list(engine.subs.values())
    records = list(engine.records.values())
    unplaced = [sub.row.unplaced for sub in subs]
    return [
        Family(
            "flotilla_scheduler_unplaced_replicas",
            "gauge",
            "Replicas (Divide) no eligible cluster could take, summed over subscriptions.",
            [Sample({}, sum(unplaced))],
        ),
        Family(
            "flotilla_scheduler_subscriptions",
            "gauge",
            "Subscriptions, by whether all their replicas are placed (placed) or some are not (short).",
            [
                Sample({"placement": "placed"}, sum(1 for n in unplaced if n == 0)),
                Sample({"placement": "short"}, sum(1 for n in unplaced if n > 0)),
            ],
        ),
        Family(
            "flotilla_scheduler_placements",
            "gauge",
            "Placements (a subscription on a cluster).",
            [Sample({}, sum(len(sub.placements) for sub in subs))],
        ),
        Family(
            "flotilla_scheduler_clusters",
            "gauge",
            "Clusters the scheduler's read model knows, by whether placement may use them (approved, not lost).",
            [
                Sample({"eligible": "true"}, sum(1 for r in records if r.approved and not r.lost)),
                Sample({"eligible": "false"}, sum(1 for r in records if not (r.approved and not r.lost))),
            ],
        ),
    ]


def register(metrics: Registry, engine: Engine) -> None:
    metrics.collector(lambda: families(engine), METRICS)
