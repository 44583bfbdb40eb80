"""Splitting planned clusters into waves (label stages, or a canary then cumulative percentages), and
estimating how long a wave takes under max_concurrent_clusters. Pure."""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping

from flotilla_contracts.v1.upgrade import PlannedCluster, Refusal, RefusalReason
from flotilla_upgrade_orchestrator.spec import CheckedSpec


def makespan(durations: list[float], slots: int) -> float:
    """Longest-processing-time-first estimate of running these with `slots` at once."""
    loads = [0.0] * max(1, slots)
    for duration in sorted(durations, reverse=True):
        heapq.heapreplace(loads, loads[0] + duration)
    return max(loads)


def split_waves(
    checked: CheckedSpec, clusters: list[tuple[PlannedCluster, Mapping[str, str]]]
) -> tuple[list[tuple[str, list[PlannedCluster]]], list[Refusal]]:
    """Clusters (in order, with labels) into waves: label stages, or a canary then cumulative percentages."""
    waves = checked.spec.waves
    if checked.stages:
        taken: set[str] = set()
        staged: list[tuple[str, list[PlannedCluster]]] = []
        for name, selector in checked.stages:
            members = [c for c, labels in clusters if c.cluster_id not in taken and selector.matches(labels)]
            taken.update(c.cluster_id for c in members)
            staged.append((name, members))
        left = [
            Refusal(
                reason=RefusalReason.INVALID_SPEC,
                cluster_id=c.cluster_id,
                message=f"cluster {c.cluster_id} matches the selector but no stage; add a stage or narrow the selector",
            )
            for c, _ in clusters
            if c.cluster_id not in taken
        ]
        return staged, left
    ordered = [c for c, _ in clusters]
    result: list[tuple[str, list[PlannedCluster]]] = []
    done = 0
    if waves.canary_clusters > 0:
        done = min(waves.canary_clusters, len(ordered))
        result.append(("canary", ordered[:done]))
    if not waves.percentages:
        result.append(("rest" if result else "all", ordered[done:]))
        return result, []
    for pct in waves.percentages:
        upto = max(done, math.ceil(len(ordered) * pct / 100))
        result.append((f"{pct}%", ordered[done:upto]))
        done = upto
    return result, []
