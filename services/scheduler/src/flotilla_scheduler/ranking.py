"""The placement ranking key, written once: which feasible cluster takes a free slot first.

`placement.ranked` (best first), `placement.pick` (spread over a topology label, a heap of these keys) and
`Fleet.least_loaded` (the load index's fast path) all order clusters by `rank_key`, so they cannot disagree.
Pure: plain values in, a tuple out.
"""

from __future__ import annotations

RankKey = tuple[int, int, int, str]


def rank_key(cluster_id: str, load: int, *, penalty: int = 0, spread: int = 0) -> RankKey:
    """Smaller ranks first. What it prefers, in order, and why:

    1. `penalty`: fewer `PreferNoSchedule` taints the policy does not tolerate. The cluster's owner asked to be
       avoided; that wish comes before any balancing of our own.
    2. `spread`: fewer clusters already chosen in the same topology domain (only with `spreadTopologyKey`,
       else 0), so one failing zone or region takes as few of a subscription's placements as it can.
    3. `load`: fewer placements already on the cluster, so work spreads over the fleet.
    4. `cluster_id`: a total order, so the same fleet gives the same decision on every replica and after every
       restart (no placement moves because of an arbitrary tie-break).
    """
    return (penalty, spread, load, cluster_id)
