"""Moving a rollout on: clusters settling, health gates, waves, windows and starts, the steps to issue, a
retry's reopening and no progress. Pure: a view in, intents and the next thing to look at out.

`advance` is one pass of a fixpoint: it returns the moves of the first stage that has any and asks to be
called again (the applier loops until a pass has nothing to do), so each stage decides on a state in which
the stages before it have nothing left to do.
"""

from __future__ import annotations

from datetime import datetime

from flotilla_contracts.v1.heartbeat import ClusterHealth
from flotilla_contracts.v1.upgrade_status import (
    ClusterRolloutState,
    FreezeReason,
    RolloutState,
    WaveState,
)
from flotilla_upgrade_orchestrator import retries, scheduling, stall
from flotilla_upgrade_orchestrator.decide.clusters import reopen, settle_cluster
from flotilla_upgrade_orchestrator.decide.facts import Advance, Decision, LiftBudgetFreeze
from flotilla_upgrade_orchestrator.decide.intents import (
    ClusterTo,
    Freeze,
    Intent,
    Issue,
    MarkActive,
    Note,
    RolloutTo,
    SetCluster,
    SetRollout,
    SetWave,
    Unfreeze,
    WaveTo,
)
from flotilla_upgrade_orchestrator.decide.view import View
from flotilla_upgrade_orchestrator.model import (
    ACTIVE_CLUSTER,
    WAVE_DONE_CLUSTER,
    WINDING_DOWN,
    ClusterRec,
)

C = ClusterRolloutState
_UPGRADING = (C.UPGRADING_CONTROL_PLANE, C.UPGRADING_WORKERS)
_GATE_BAD = (ClusterHealth.DEGRADED, ClusterHealth.UNREACHABLE)


def advance(v: View, fact: Advance, now: datetime) -> Decision:
    """One pass: settle clusters, then (when one settled, or for the whole rollout) gates, waves, the end of
    a rollback, windows and starts (STAGES, each repeated until it has nothing more, then the next); then
    the steps to issue (I1, I2, I7, I9)."""
    rollout = v.rollout
    if v.epoch is None:
        return Decision()  # not our lease (I6): somebody else writes this rollout, or nobody until we get it back
    if rollout.rec.epoch != v.epoch:
        return Decision([SetRollout({"epoch": v.epoch})], (fact,))
    if fact.only is not None:
        cluster = rollout.clusters[fact.only]
        if cluster.state in WINDING_DOWN and retries.due(rollout, cluster):
            return _queued_retry(v, cluster, fact, now)
        moves, left = settle_cluster(v, cluster, now)
        settled = fact.settled or left
        if moves:
            return Decision(moves, (Advance(fact.only, settled),))
        if not settled:
            return Decision(issue_steps(v, [cluster], now))
        fact = Advance(stage=1)  # it settled: the rollout-wide stages, as after any cluster's move
    if fact.stage == 0:
        moves = []
        for cluster in rollout.clusters.values():
            if cluster.state in WINDING_DOWN and retries.due(rollout, cluster):
                return _queued_retry(v, cluster, fact, now)
            moves += settle_cluster(v, cluster, now)[0]
        if moves:
            return Decision(moves, (fact,))
    for index, stage in enumerate(STAGES[max(fact.stage, 1) - 1 :], start=max(fact.stage, 1)):
        moves = stage(v, now)
        if moves:
            return Decision(moves, (Advance(stage=index),))  # the same stage again, then on
    return Decision(issue_steps(v, [c for c in rollout.clusters.values() if _may_have_work(c)], now))


def _queued_retry(v: View, cluster: ClusterRec, fact: Advance, now: datetime) -> Decision:
    """A retry asked for while the cluster still settled takes effect once it has (retries.py)."""
    why = ", asked for while the cluster was still giving nodes back"
    note = Note("info", "queued retry started: its unfinished nodes begin a new attempt", cluster.cluster_id)
    return Decision([*reopen(v, cluster, now, why), note], (LiftBudgetFreeze("Retried"), fact))


def _may_have_work(cluster: ClusterRec) -> bool:
    if cluster.state in ACTIVE_CLUSTER:
        return True
    return cluster.state in WINDING_DOWN and scheduling.cluster_outstanding(cluster)


# --- the rollout's stages --------------------------------------------------------------------------------------


def gates(v: View, now: datetime) -> list[Intent]:
    """Failure budgets and health gates (I7): freeze the rollout with the reason when one is broken."""
    rollout = v.rollout
    freeze = rollout.rec.freeze
    if freeze is not None and freeze.reason is FreezeReason.FLEET_DISRUPTION and not v.disruption:
        return [Unfreeze("FleetRecovered", "the fleet recovered from its disruption")]  # only the freeze it caused
    if rollout.state not in (RolloutState.RUNNING, RolloutState.AWAITING_APPROVAL) or freeze:
        return []
    if v.disruption:
        why = f"much of the fleet went Unreachable at once ({v.disruption}); frozen until it recovers"
        return [Freeze(FreezeReason.FLEET_DISRUPTION, why)]
    exceeded = scheduling.budget_exceeded(rollout)
    if exceeded is not None:
        return [Freeze(*exceeded)]
    health_gates = rollout.spec.health_gates
    for cluster in rollout.clusters.values():
        fleet = v.fleet.get(cluster.cluster_id)
        if cluster.state is not C.SOAKING or fleet is None:
            continue
        cid = cluster.cluster_id
        if health_gates.cluster_ready_through_soak and fleet.health in _GATE_BAD:
            why = f"cluster {cid} went {fleet.health.value} during its soak"
            return [Freeze(FreezeReason.HEALTH_GATE_FAILED, why, cluster_id=cid)]
        if (
            health_gates.api_servers_ready
            and fleet.api_servers_total
            and fleet.api_servers_ready < fleet.api_servers_total
        ):
            why = (
                f"cluster {cid}: {fleet.api_servers_ready} of {fleet.api_servers_total} API servers ready during "
                "its soak"
            )
            return [Freeze(FreezeReason.HEALTH_GATE_FAILED, why, cluster_id=cid)]
    return []


def waves(v: View, now: datetime) -> list[Intent]:
    """The current wave's next move (open, approve, soak, close) or the rollout's end after the last."""
    rollout = v.rollout
    if rollout.state not in (RolloutState.RUNNING, RolloutState.AWAITING_APPROVAL):
        return []
    index = scheduling.current_wave(rollout)
    if index is None:
        return [_finish(v)]
    wave = rollout.waves[index]
    if wave.state is WaveState.PENDING:
        if wave.requires_approval and wave.approved_at is None:
            why = f"wave {index} waits for `approve --wave {index}`"
            return [
                WaveTo(index, WaveState.AWAITING_APPROVAL, "ApprovalRequired"),
                RolloutTo(RolloutState.AWAITING_APPROVAL, "ApprovalRequired", why),
            ]
        return [WaveTo(index, WaveState.RUNNING, "Started")]
    if wave.state is WaveState.AWAITING_APPROVAL:
        return [] if wave.approved_at is None else [WaveTo(index, WaveState.RUNNING, "Approved")]
    if rollout.state is RolloutState.AWAITING_APPROVAL:
        return [RolloutTo(RolloutState.RUNNING, "Approved", f"wave {index} approved")]
    members = [c for c in rollout.clusters.values() if c.wave == index]
    if wave.state is WaveState.RUNNING:
        if not all(c.state in WAVE_DONE_CLUSTER and not scheduling.cluster_outstanding(c) for c in members):
            return []
        if any(c.state is C.SOAKING for c in members):
            soak_until = now.timestamp() + rollout.spec.soak_s
            return [SetWave(index, {"soak_until": soak_until}), WaveTo(index, WaveState.SOAKING, "Soaking")]
    out: list[Intent] = []
    if wave.state is WaveState.SOAKING:
        if wave.soak_until is not None and now.timestamp() < wave.soak_until:
            return []
        out += [ClusterTo(c.cluster_id, C.SUCCEEDED, "Soaked") for c in members if c.state is C.SOAKING]
    failed = any(c.state is C.FAILED for c in members)
    out.append(WaveTo(index, WaveState.COMPLETED_WITH_FAILURES if failed else WaveState.SUCCEEDED, "Done"))
    return out


def _finish(v: View) -> RolloutTo:
    clusters = list(v.rollout.clusters.values())
    target = v.rollout.spec.target_version
    failed = [c.cluster_id for c in clusters if c.state is C.FAILED]
    done = sum(1 for c in clusters if c.state is C.SUCCEEDED)
    skipped = sum(1 for c in clusters if c.state is C.SKIPPED)
    if failed:
        return RolloutTo(
            RolloutState.COMPLETED_WITH_FAILURES,
            "Done",
            f"{done} cluster(s) at {target}, {len(failed)} failed ({', '.join(failed[:5])}), "
            f"{skipped} skipped; `retry` tries the failed ones again",
        )
    return RolloutTo(
        RolloutState.SUCCEEDED, "Done", f"{done} cluster(s) at {target}" + (f", {skipped} skipped" if skipped else "")
    )


def finish_rollback(v: View, now: datetime) -> list[Intent]:
    """A rollback ends when no cluster is rolling back (or frozen on the way) and nothing of ours is left."""
    rollout = v.rollout
    if rollout.state is not RolloutState.ROLLING_BACK:
        return []
    for cluster in rollout.clusters.values():
        if cluster.state in (C.ROLLING_BACK, C.FROZEN) or scheduling.cluster_outstanding(cluster):
            return []
    returned = sum(1 for c in rollout.clusters.values() for n in c.nodes if n.rolled_back)
    failed = [c.cluster_id for c in rollout.clusters.values() if c.state is C.FAILED]
    message = f"{returned} node(s) returned to their previous version. {rollout.rec.message}"
    if failed:
        message += f"; clusters with failures: {', '.join(failed[:5])}"
    return [RolloutTo(RolloutState.ROLLED_BACK, "RolledBack", message)]


def windows(v: View, now: datetime) -> list[Intent]:
    """Clusters of started waves wait outside their maintenance windows (status says when one opens)."""
    rollout = v.rollout
    wave = scheduling.current_wave(rollout)
    if rollout.state is not RolloutState.RUNNING or wave is None or not v.windows:
        return []
    out: list[Intent] = []
    for cluster in rollout.clusters.values():
        waiting = cluster.state is C.WAITING_WINDOW
        if cluster.wave > wave or not (waiting or cluster.state is C.PENDING):
            continue
        window = v.window(cluster, now)
        opens = None if window.opens_at is None else window.opens_at.timestamp()
        if cluster.window_opens_at != opens:
            out.append(SetCluster(cluster.cluster_id, {"window_opens_at": opens}))  # shown in status
        if not window.open and not waiting:
            out.append(ClusterTo(cluster.cluster_id, C.WAITING_WINDOW, "OutsideWindow"))
        elif window.open and waiting:
            out.append(ClusterTo(cluster.cluster_id, C.PENDING, "WindowOpened"))
    return out


def starts(v: View, now: datetime) -> list[Intent]:
    """Start the clusters the wave, the concurrency limit, health and windows allow (I1, I7)."""
    rollout = v.rollout
    if rollout.state is not RolloutState.RUNNING:
        return []
    out: list[Intent] = []
    for cluster in scheduling.clusters_to_start(rollout, lambda c: v.window(c, now).open, v.health):
        has_cp = any(n.control_plane and not n.verified for n in cluster.nodes)
        out.append(
            ClusterTo(cluster.cluster_id, C.UPGRADING_CONTROL_PLANE if has_cp else C.UPGRADING_WORKERS, "Started")
        )
    return out


# The rollout-wide stages after settling, in order (Advance.stage counts from 1).
STAGES = (gates, waves, finish_rollback, windows, starts)


def _rollback_turn(v: View, cluster: ClusterRec) -> bool:
    """Clusters roll back at most max_concurrent_clusters at a time, in rollout order."""
    slots = v.rollout.spec.max_concurrent_clusters
    for other in v.rollout.clusters.values():
        if other.state is C.ROLLING_BACK:
            if other is cluster:
                return True
            slots -= 1
            if slots <= 0:
                return False
    return False


def issue_steps(v: View, clusters: list[ClusterRec], now: datetime) -> list[Intent]:
    """What each cluster may do now (I1, I2, I7, I9), as scheduling.cluster_steps chooses it."""
    state = v.rollout.state
    running = state in (RolloutState.RUNNING, RolloutState.AWAITING_APPROVAL, RolloutState.ROLLING_BACK)
    out: list[Intent] = []
    for cluster in clusters:
        may_continue = running and cluster.state is not C.FROZEN
        may_start = may_continue and cluster.state in (*_UPGRADING, C.ROLLING_BACK)
        if may_start and cluster.state is C.ROLLING_BACK:
            may_start = _rollback_turn(v, cluster)
        elif may_start:
            may_start = v.window(cluster, now).open
        if state is RolloutState.ABORTED:
            may_continue = may_start = False
        limits = scheduling.Limits(v.rollout.spec.max_unavailable, may_start, may_continue)
        for node, step in scheduling.cluster_steps(cluster, v.fleet_nodes(cluster.cluster_id), limits):
            out.append(Issue(cluster.cluster_id, node.node_id, step))
    return out


# --- no silent stall ---------------------------------------------------------------------------------------------


def check_stall(v: View, now: datetime) -> list[Intent]:
    """A Running (or RollingBack) rollout idle for the no-progress time, waiting on nothing that ends by itself,
    freezes with NoProgress and what it waits for (stall.py)."""
    rollout = v.rollout
    if rollout.state not in (RolloutState.RUNNING, RolloutState.ROLLING_BACK) or rollout.rec.freeze is not None:
        return []
    if v.active_at is None:
        return [MarkActive()]  # a restart starts the clock again
    idle = now.timestamp() - v.active_at
    if idle < v.timeouts.no_progress_s:
        return []
    message = stall.stalled(rollout, v.fleet, idle)
    if message is None:
        return [MarkActive()]  # a wait that ends by itself: look again one no-progress time later
    return [Note("warning", f"no progress: {message}"), Freeze(FreezeReason.NO_PROGRESS, message)]
