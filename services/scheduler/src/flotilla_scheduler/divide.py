"""Splitting a replica count among clusters: proportional to weights within per-cluster bounds, and steady.

`ideal_split` is the fresh answer (largest remainder, water-filling the bounds). `steady_split` starts
from what each cluster runs now and only moves the difference, so losing a cluster moves its share and
nothing else. Pure integer arithmetic; ties break by cluster id so the answer is deterministic.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Split:
    """Replicas per cluster (zeros included) and what did not fit anywhere."""

    replicas: dict[str, int]
    unplaced: int


def ideal_split(replicas: int, weights: Mapping[str, int], low: int, high: int | None) -> Split:
    """Each cluster gets `low`, the rest goes by weight, none above `high`; all weights zero: equal shares."""
    ids = sorted(weights)
    if not ids:
        return Split({}, replicas)
    result = {c: min(low, high) if high is not None else low for c in ids}
    remaining = replicas - sum(result.values())
    if remaining < 0:  # more clusters than `low` allows: the caller chooses fewer; give what there is
        result = {c: 0 for c in ids}
        for c in ids[: replicas // max(low, 1)]:
            result[c] = low
        return Split(result, replicas - sum(result.values()))
    room = {c: (high - result[c]) if high is not None else None for c in ids}
    active = [c for c in ids if room[c] is None or room[c] > 0]  # type: ignore[operator]
    equal = all(weights[c] <= 0 for c in ids)
    weight = {c: 1 if equal else max(weights[c], 0) for c in ids}
    # Water-filling: shares above a cluster's room are capped and the rest is spread over the others.
    while remaining > 0 and active:
        total = sum(weight[c] for c in active)
        if total == 0:
            weight = {c: 1 for c in ids}
            total = len(active)
        # A share is remaining * weight / total; its numerator over the common `total` keeps the arithmetic exact.
        shares = {c: remaining * weight[c] for c in active}
        capped = [c for c in active if room[c] is not None and shares[c] >= room[c] * total]  # type: ignore[operator]
        if capped:
            for c in capped:
                amount = room[c]
                assert amount is not None
                result[c] += amount
                remaining -= amount
                room[c] = 0
            active = [c for c in active if c not in capped]
            continue
        floors = {c: shares[c] // total for c in active}
        for c in active:
            result[c] += floors[c]
        left = remaining - sum(floors.values())
        by_fraction = sorted(active, key=lambda c: (-(shares[c] % total), c))  # the largest remainders first
        for c in by_fraction[:left]:
            result[c] += 1
        remaining = 0
    return Split(result, remaining)


def steady_split(
    replicas: int, weights: Mapping[str, int], low: int, high: int | None, current: Mapping[str, int]
) -> Split:
    """Keep what each chosen cluster runs (within bounds) and move only the deficit or the surplus.

    The deficit goes, one replica at a time, to the cluster furthest below its ideal share; a surplus is
    taken from the cluster furthest above it. Clusters not in `weights` are not chosen any more.
    """
    ideal = ideal_split(replicas, weights, low, high).replicas
    result: dict[str, int] = {}
    for c in weights:
        have = current.get(c, 0)
        result[c] = max(low, have) if high is None else min(high, max(low, have))
    total = sum(result.values())
    unplaced = 0
    if total < replicas:
        heap = [(-(ideal[c] - result[c]), c) for c in result if high is None or result[c] < high]
        heapq.heapify(heap)
        deficit = replicas - total
        while deficit and heap:
            _, c = heapq.heappop(heap)
            result[c] += 1
            deficit -= 1
            if high is None or result[c] < high:
                heapq.heappush(heap, (-(ideal[c] - result[c]), c))
        unplaced = deficit
    elif total > replicas:
        heap = [(-(result[c] - ideal[c]), c) for c in result if result[c] > low]
        heapq.heapify(heap)
        surplus = total - replicas
        while surplus and heap:
            _, c = heapq.heappop(heap)
            result[c] -= 1
            surplus -= 1
            if result[c] > low:
                heapq.heappush(heap, (-(result[c] - ideal[c]), c))
    return Split(result, unplaced)


def fitting(chosen: Sequence[str], replicas: int, low: int) -> list[str]:
    """The first clusters of `chosen` (best first) that can each get `low` replicas out of `replicas`."""
    if low <= 0:
        return list(chosen)
    return list(chosen[: replicas // low])
