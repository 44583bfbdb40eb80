"""What an operator alerts on, on /metrics: clusters by membership state (Pending ones wait for an operator).

Counted in the registration's own table at scrape time (one GROUP BY over the clusters: nothing on the join path;
nodes are counted by heartbeat, by health).
"""

from __future__ import annotations

from flotilla_contracts.v1.registration import ClusterState
from flotilla_runtime.metrics import Family, Registry, Sample
from flotilla_runtime.store import Store

METRICS = ("flotilla_registration_clusters",)


async def families(store: Store) -> list[Family]:
    rows = await store.fetchall("SELECT state, COUNT(*) FROM clusters GROUP BY state")
    by_state = {str(row[0]): int(row[1]) for row in rows}
    return [
        Family(
            "flotilla_registration_clusters",
            "gauge",
            "Clusters by membership state (Pending waits for an operator's approve or reject).",
            [Sample({"state": state.value}, by_state.get(state.value, 0)) for state in ClusterState],
        )
    ]


def register(metrics: Registry, store: Store) -> None:
    metrics.collector(lambda: families(store), METRICS)
