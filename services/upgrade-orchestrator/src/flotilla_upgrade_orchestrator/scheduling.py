"""The heart of the rollout: from the current state, limits, health and time, the next node steps to issue.

Pure and synchronous: records and plain values in, decisions out. It holds these invariants:
- I1: in a cluster, unavailable nodes (cordoned by us, being cordoned, cordoned by others, not Ready) never
  exceed `max_unavailable`; clusters holding a slot never exceed `max_concurrent_clusters`.
- I2: control-plane nodes one at a time; no worker is cordoned before every planned control-plane node is
  verified at the target.
- I4: a node has at most one step in flight and only ever gets the step after its current state.
- I7: no new disruption (cordon, drain, upgrade, rollback) while paused, frozen or outside a window;
  steps that give capacity back (verify, uncordon) still go out.
- I9: uncordon only nodes we cordoned.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from flotilla_contracts.v1 import step_order
from flotilla_contracts.v1.agent import StepKind
from flotilla_contracts.v1.heartbeat import ClusterHealth
from flotilla_contracts.v1.upgrade_status import ClusterRolloutState, FreezeReason, NodeStepState
from flotilla_upgrade_orchestrator.fleet import FleetNode
from flotilla_upgrade_orchestrator.model import (
    ACTIVE_CLUSTER,
    FINAL_WAVE,
    WINDING_DOWN,
    ClusterRec,
    NodeRec,
    Rollout,
)

DISRUPTIVE = frozenset({StepKind.CORDON, StepKind.DRAIN, StepKind.UPGRADE, StepKind.ROLLBACK})
# The forward step after each state (from contracts); next_step handles Verified (uncordon only ours) before it.
_FORWARD_NEXT = step_order.NEXT_STEP


def next_step(node: NodeRec) -> StepKind | None:
    """The one step this node needs next, whatever the limits; None when it has nothing to do."""
    if node.in_flight is not None:
        return None
    if node.state is NodeStepState.FAILED:
        # A node whose drain failed is still on its old version: give it back. One that failed later
        # (upgrade, verify) stays cordoned for a person to look at, until a retry, skip or abort.
        # An abort or a skip (wind-down) gives back every node we cordoned, failed ones included.
        if node.cordoned_by_us and (node.wind_down or node.failed_step in (StepKind.CORDON, StepKind.DRAIN)):
            return StepKind.UNCORDON
        return None
    if node.rollback:
        if node.rolled_back:
            return StepKind.UNCORDON if node.cordoned_by_us else None
        if not (node.cordoned_by_us or node.pre_cordoned):
            # A rollback that failed next to it stops the cluster's returns: not started, left as it is.
            return None if node.wind_down else StepKind.CORDON
        if not node.drained:
            return StepKind.DRAIN
        return StepKind.ROLLBACK
    if node.wind_down:
        if node.state is NodeStepState.UPGRADED:
            return StepKind.VERIFY  # its kubelet already moved: finish it rather than leave it half-done
        return StepKind.UNCORDON if node.cordoned_by_us else None
    if node.state is NodeStepState.VERIFIED:
        return StepKind.UNCORDON if node.cordoned_by_us else None
    return _FORWARD_NEXT.get(node.state)


def cluster_outstanding(cluster: ClusterRec) -> bool:
    """Something of ours is still under way on the cluster: a step in flight or a node still to give back."""
    return any(n.in_flight is not None or (n.cordoned_by_us and next_step(n) is not None) for n in cluster.nodes)


def settled(node: NodeRec) -> bool:
    """Nothing in flight and nothing left to do (until a retry or a rollback)."""
    return node.in_flight is None and next_step(node) is None


def unavailable(cluster: ClusterRec, fleet_nodes: Mapping[str, FleetNode]) -> set[str]:
    """Nodes of the cluster that count against max_unavailable now (I1), ours and those already down."""
    down = {node_id for node_id, node in fleet_nodes.items() if not node.available}
    for node in cluster.nodes:
        # A node found cordoned by someone else counts while we work on it; once verified, the inventory
        # says whether it is still down (its owner may have uncordoned it).
        pre_cordoned = node.pre_cordoned and not node.verified
        if node.cordoned_by_us or pre_cordoned or node.in_flight is StepKind.CORDON:
            down.add(node.node_id)
    return down


@dataclass(frozen=True)
class Limits:
    """What this cluster may do right now."""

    max_unavailable: int
    may_start: bool  # take a new node out (cordon): not paused, frozen, aborted, outside a window
    may_continue: bool  # drain, upgrade or roll back a node already cordoned: not paused or frozen


def _cp_done(node: NodeRec) -> bool:
    return node.verified and node.state is not NodeStepState.FAILED


def cluster_steps(
    cluster: ClusterRec, fleet_nodes: Mapping[str, FleetNode], limits: Limits
) -> list[tuple[NodeRec, StepKind]]:
    """The steps to issue in one cluster now, in node order."""
    chosen: list[tuple[NodeRec, StepKind]] = []
    for node in cluster.nodes:
        step = next_step(node)
        if step is None or step is StepKind.CORDON:
            continue
        if step in DISRUPTIVE and not limits.may_continue:
            continue
        chosen.append((node, step))
    if not limits.may_start:
        return chosen
    down = unavailable(cluster, fleet_nodes)
    # A node already unavailable goes first: it is taken within the budget it already uses (no new disruption).
    for node in sorted(_cordon_candidates(cluster), key=lambda n: n.node_id not in down):
        if len(down) + (0 if node.node_id in down else 1) > limits.max_unavailable:
            break
        down.add(node.node_id)
        chosen.append((node, StepKind.CORDON))
    return chosen


def _cordon_candidates(cluster: ClusterRec) -> list[NodeRec]:
    """Nodes that may be taken out next, in order; the caller stops at the disruption budget."""
    if cluster.state is ClusterRolloutState.ROLLING_BACK:
        return _rollback_candidates(cluster)
    if cluster.state not in (ClusterRolloutState.UPGRADING_CONTROL_PLANE, ClusterRolloutState.UPGRADING_WORKERS):
        return []
    if any(n.state is NodeStepState.FAILED and n.control_plane for n in cluster.nodes):
        return []
    cps = [n for n in cluster.nodes if n.control_plane]
    unfinished = [cp for cp in cps if not (_cp_done(cp) and not cp.cordoned_by_us)]
    if unfinished:
        # One control-plane node at a time: none while one is under way, else the first not yet started.
        if any(cp.in_flight is not None or cp.cordoned_by_us for cp in unfinished):
            return []
        return [unfinished[0]] if next_step(unfinished[0]) is StepKind.CORDON else []
    return [n for n in cluster.nodes if not n.control_plane and next_step(n) is StepKind.CORDON]


def _rollback_candidates(cluster: ClusterRec) -> list[NodeRec]:
    """Rollback: workers first, then control-plane nodes one at a time (patch-level only)."""
    workers = [n for n in cluster.nodes if n.rollback and not n.control_plane]
    if any(not n.rolled_back and n.state is not NodeStepState.FAILED for n in workers):
        return [n for n in workers if next_step(n) is StepKind.CORDON]
    if any(not settled(n) for n in workers):
        return []
    for cp in (n for n in cluster.nodes if n.rollback and n.control_plane):
        if cp.state is NodeStepState.FAILED:
            return []
        if cp.rolled_back and not cp.cordoned_by_us:
            continue
        return [cp] if next_step(cp) is StepKind.CORDON else []
    return []


def current_wave(rollout: Rollout) -> int | None:
    """The lowest wave not finished; None when every wave is."""
    for wave in rollout.waves:
        if wave.state not in FINAL_WAVE:
            return wave.index
    return None


def holds_slot(cluster: ClusterRec) -> bool:
    """Counts against max_concurrent_clusters: upgrading, frozen, rolling back, or still giving nodes back."""
    if cluster.state in ACTIVE_CLUSTER:
        return True
    return cluster.state in WINDING_DOWN and cluster_outstanding(cluster)


def clusters_to_start(
    rollout: Rollout,
    window_open: Callable[[ClusterRec], bool],
    health: Callable[[str], ClusterHealth],
) -> list[ClusterRec]:
    """Pending clusters of waves up to the current one to start now, within max_concurrent_clusters (I1)."""
    wave = current_wave(rollout)
    if wave is None:
        return []
    busy = sum(1 for c in rollout.clusters.values() if holds_slot(c))
    room = rollout.spec.max_concurrent_clusters - busy
    starts: list[ClusterRec] = []
    waiting = (ClusterRolloutState.PENDING, ClusterRolloutState.WAITING_WINDOW)
    for cluster in rollout.clusters.values():  # kept in (wave, order)
        if room <= 0:
            break
        if cluster.wave > wave or cluster.state not in waiting:
            continue
        if health(cluster.cluster_id) is ClusterHealth.UNREACHABLE or not window_open(cluster):
            continue
        starts.append(cluster)
        room -= 1
    return starts


def cluster_finished(cluster: ClusterRec) -> bool:
    """Every node settled: the cluster can leave its upgrading state."""
    return all(settled(n) for n in cluster.nodes)


def budget_exceeded(rollout: Rollout) -> tuple[FreezeReason, str] | None:
    """The freeze reason (node or cluster failure budget) and a message when a budget is exceeded (I7)."""
    budget = rollout.spec.failure_budget
    counted = [c for c in rollout.clusters.values() if c.state is not ClusterRolloutState.SKIPPED]
    failed_nodes: list[str] = []
    for cluster in counted:
        failed = {n.node_id for n in cluster.nodes if n.state is NodeStepState.FAILED}
        failed.update(cluster.not_ready)
        failed_nodes += [f"{cluster.cluster_id}/{node_id}" for node_id in sorted(failed)]
    if len(failed_nodes) > budget.max_failed_nodes:
        shown = ", ".join(failed_nodes[:5]) + (" ..." if len(failed_nodes) > 5 else "")
        return FreezeReason.NODE_FAILURE_BUDGET_EXCEEDED, (
            f"{len(failed_nodes)} node(s) failed or went NotReady ({shown}); the budget allows "
            f"{budget.max_failed_nodes}"
        )
    failed_clusters = [c.cluster_id for c in counted if c.state is ClusterRolloutState.FAILED]
    if len(failed_clusters) > budget.max_failed_clusters:
        shown = ", ".join(failed_clusters[:5]) + (" ..." if len(failed_clusters) > 5 else "")
        return FreezeReason.CLUSTER_FAILURE_BUDGET_EXCEEDED, (
            f"{len(failed_clusters)} cluster(s) failed ({shown}); the budget allows {budget.max_failed_clusters}"
        )
    return None
