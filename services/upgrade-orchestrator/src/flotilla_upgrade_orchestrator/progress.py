"""The engine's moves above single nodes: clusters settling, health gates, waves, soak, starts and steps.

Each function decides with `scheduling` and applies through the engine, so every change is recorded and
announced in the caller's transaction.
"""

from __future__ import annotations

from datetime import datetime

from flotilla_contracts.v1.heartbeat import ClusterHealth
from flotilla_contracts.v1.upgrade_status import (
    ClusterRolloutState,
    FreezeReason,
    NodeStepState,
    RolloutState,
    WaveState,
)
from flotilla_runtime.logs import get_logger
from flotilla_runtime.store import SyncTx
from flotilla_upgrade_orchestrator import inventory, retries, scheduling, stall
from flotilla_upgrade_orchestrator.engine import Engine
from flotilla_upgrade_orchestrator.model import (
    ACTIVE_CLUSTER,
    BUDGET_FREEZES,
    FINAL_WAVE,
    WAVE_DONE_CLUSTER,
    WINDING_DOWN,
    ClusterRec,
    Rollout,
)

log = get_logger("flotilla.upgrade-orchestrator.engine")
_UPGRADING = (ClusterRolloutState.UPGRADING_CONTROL_PLANE, ClusterRolloutState.UPGRADING_WORKERS)
_GATE_BAD = (ClusterHealth.DEGRADED, ClusterHealth.UNREACHABLE)


def advance(engine: Engine, tx: SyncTx, rollout: Rollout, now: datetime, only: str | None = None) -> None:
    """Move the rollout as far as it can go now; `only` limits the work to one cluster unless it settles."""
    epoch = engine.epoch_of(rollout.rollout_id)
    if epoch is None:
        return  # not our lease (I6): somebody else writes this rollout, or nobody until we get it back
    if rollout.rec.epoch != epoch:
        rollout.rec.epoch = epoch
        engine.touch(rollout, now)
    clusters = [rollout.clusters[only]] if only is not None else list(rollout.clusters.values())
    settled_any = False
    for cluster in clusters:
        settled_any |= settle_cluster(engine, tx, rollout, cluster, now)
    if only is None or settled_any:
        check_gates(engine, tx, rollout, now)
        progress_waves(engine, tx, rollout, now)
        finish_rollback(engine, tx, rollout, now)
        start_clusters(engine, tx, rollout, now)
        clusters = [c for c in rollout.clusters.values() if _may_have_work(c)]
    for cluster in clusters:
        issue_steps(engine, tx, rollout, cluster, epoch, now)


def _may_have_work(cluster: ClusterRec) -> bool:
    if cluster.state in ACTIVE_CLUSTER:
        return True
    return cluster.state in WINDING_DOWN and scheduling.cluster_outstanding(cluster)


def settle_cluster(engine: Engine, tx: SyncTx, rollout: Rollout, cluster: ClusterRec, now: datetime) -> bool:
    """Move a cluster on when its nodes allow; True when it left its working state."""
    state = cluster.state
    if state is ClusterRolloutState.UPGRADING_CONTROL_PLANE:
        cps = [n for n in cluster.nodes if n.control_plane]
        if all(n.verified and not n.cordoned_by_us for n in cps) and any(not n.control_plane for n in cluster.nodes):
            engine.cluster_to(
                tx,
                rollout,
                cluster,
                ClusterRolloutState.UPGRADING_WORKERS,
                now,
                "ControlPlaneUpgraded",
                f"every API server is at {cluster.target_version}; workers may move (I2)",
            )
            state = cluster.state
    if state in _UPGRADING and scheduling.cluster_finished(cluster):
        failed = [n for n in cluster.nodes if n.state is NodeStepState.FAILED]
        if failed:
            cluster.failure = f"{failed[0].node_name}: {failed[0].failure}"
            engine.cluster_to(tx, rollout, cluster, ClusterRolloutState.FAILED, now, "NodeFailed", cluster.failure)
            run_queued_retry(engine, tx, rollout, cluster, now)
        elif inventory.hold_until_reported(engine, tx, rollout, cluster, now):
            return False  # done means the fleet says so: the wait and its reason are in status
        elif cluster.state is ClusterRolloutState.FAILED:
            return True  # its inventory never reached the target (the reason names the nodes)
        elif rollout.spec.soak_s > 0:
            engine.cluster_to(tx, rollout, cluster, ClusterRolloutState.SOAKING, now, "Upgraded")
        else:
            engine.cluster_to(tx, rollout, cluster, ClusterRolloutState.SUCCEEDED, now, "Upgraded")
        return True
    if state is ClusterRolloutState.ROLLING_BACK and scheduling.cluster_finished(cluster):
        # Only a node we tried to return can fail its rollback; one that failed forward and never moved
        # (no rollback step) is given back as it is and is not a rollback failure.
        failed = [n for n in cluster.nodes if n.rollback and n.state is NodeStepState.FAILED]
        if failed:
            cluster.failure = f"rollback of {failed[0].node_name}: {failed[0].failure}"
            engine.cluster_to(tx, rollout, cluster, ClusterRolloutState.FAILED, now, "RollbackFailed", cluster.failure)
        else:
            engine.cluster_to(tx, rollout, cluster, ClusterRolloutState.ROLLED_BACK, now, "RolledBack")
        return True
    if state in (ClusterRolloutState.SKIPPED, ClusterRolloutState.ABORTED, ClusterRolloutState.FAILED):
        run_queued_retry(engine, tx, rollout, cluster, now)
        return not scheduling.cluster_outstanding(cluster)
    return False


# --- retry -------------------------------------------------------------------------------------------------


def reopen(engine: Engine, tx: SyncTx, rollout: Rollout, cluster: ClusterRec, now: datetime, why: str = "") -> int:
    """A settled Failed cluster starts again (Pending) against the pinned target; the nodes that get a new attempt."""
    count = 0
    for node in cluster.nodes:
        if node.succeeded or node.in_flight is not None:
            continue
        count += 1
        node.attempt += 1
        node.wind_down = False
        resume_at = node.resume_state if node.cordoned_by_us and node.resume_state is not None else None
        node.failed_step, node.failure, node.resume_state = None, "", None
        again = resume_at or NodeStepState.PENDING
        if node.state is not again:
            engine.node_to(
                tx, rollout, cluster, node, again, now, reason="Retry", message=f"attempt {node.attempt}", retry=True
            )
        if resume_at is None:
            node.drained = False
        engine.touch_node(rollout, cluster, node)
    cluster.not_ready = []
    cluster.failure = ""
    cluster.retries += 1
    cluster.retry_queued = False
    cluster.finished_at = None
    engine.cluster_to(tx, rollout, cluster, ClusterRolloutState.PENDING, now, "Retry", f"retry {cluster.retries}" + why)
    wave = rollout.waves[cluster.wave]
    if wave.state in FINAL_WAVE:
        wave.finished_at = None
        engine.wave_to(tx, rollout, wave, WaveState.RUNNING, now, "Retry")
    return count


def run_queued_retry(engine: Engine, tx: SyncTx, rollout: Rollout, cluster: ClusterRec, now: datetime) -> None:
    """A retry asked for while the cluster still settled takes effect once it has (retries.py)."""
    if not retries.due(rollout, cluster):
        return
    nodes = reopen(engine, tx, rollout, cluster, now, ", asked for while the cluster was still giving nodes back")
    lift_budget_freeze(engine, tx, rollout, "Retried", now)
    log.bind(rollout=rollout.rollout_id, cluster=cluster.cluster_id).info(
        "queued retry started: %d node(s) begin a new attempt", nodes
    )


def lift_budget_freeze(engine: Engine, tx: SyncTx, rollout: Rollout, reason: str, now: datetime) -> None:
    """A freeze for an exceeded failure budget ends when a retry or a skip brings the rollout back within it."""
    freeze = rollout.rec.freeze
    if freeze is not None and freeze.reason in BUDGET_FREEZES and scheduling.budget_exceeded(rollout) is None:
        engine.unfreeze(tx, rollout, reason, "the failure budget holds again", now)


def check_gates(engine: Engine, tx: SyncTx, rollout: Rollout, now: datetime) -> None:
    """Failure budgets and health gates (I7): freeze the rollout with the reason when one is broken."""
    if rollout.state not in (RolloutState.RUNNING, RolloutState.AWAITING_APPROVAL) or rollout.rec.freeze:
        return
    exceeded = scheduling.budget_exceeded(rollout)
    if exceeded is not None:
        reason, message = exceeded
        engine.freeze(tx, rollout, reason, message, now)
        return
    gates = rollout.spec.health_gates
    for cluster in rollout.clusters.values():
        if cluster.state is not ClusterRolloutState.SOAKING:
            continue
        fleet = engine.fleet.get(cluster.cluster_id)
        if fleet is None:
            continue
        if gates.cluster_ready_through_soak and fleet.health in _GATE_BAD:
            engine.freeze(
                tx,
                rollout,
                FreezeReason.HEALTH_GATE_FAILED,
                f"cluster {cluster.cluster_id} went {fleet.health.value} during its soak",
                now,
                cluster_id=cluster.cluster_id,
            )
            return
        if gates.api_servers_ready and fleet.api_servers_total and fleet.api_servers_ready < fleet.api_servers_total:
            engine.freeze(
                tx,
                rollout,
                FreezeReason.HEALTH_GATE_FAILED,
                f"cluster {cluster.cluster_id}: {fleet.api_servers_ready} of {fleet.api_servers_total} API servers "
                "ready during its soak",
                now,
                cluster_id=cluster.cluster_id,
            )
            return


def check_stall(engine: Engine, tx: SyncTx, rollout: Rollout, now: datetime) -> None:
    """No silent stall: a Running rollout idle for the no-progress time, waiting on nothing that ends by
    itself, freezes with NoProgress and what it waits for (stall.py)."""
    if rollout.state is not RolloutState.RUNNING or rollout.rec.freeze is not None:
        return
    last = engine.active_at.setdefault(rollout.rollout_id, now.timestamp())  # a restart starts the clock again
    idle = now.timestamp() - last
    if idle < engine.timeouts.no_progress_s:
        return
    message = stall.stalled(rollout, engine.fleet, idle)
    if message is None:
        engine.mark_active(rollout, now)  # a wait that ends by itself: look again one no-progress time later
        return
    log.bind(rollout=rollout.rollout_id).warning("no progress: %s", message)
    engine.freeze(tx, rollout, FreezeReason.NO_PROGRESS, message, now)


def finish_rollback(engine: Engine, tx: SyncTx, rollout: Rollout, now: datetime) -> None:
    """A rollback ends when no cluster is rolling back (or frozen on the way) and nothing of ours is left."""
    if rollout.state is not RolloutState.ROLLING_BACK:
        return
    for cluster in rollout.clusters.values():
        frozen_back = cluster.state is ClusterRolloutState.FROZEN
        if cluster.state is ClusterRolloutState.ROLLING_BACK or frozen_back or scheduling.cluster_outstanding(cluster):
            return
    returned = sum(1 for c in rollout.clusters.values() for n in c.nodes if n.rolled_back)
    failed = [c.cluster_id for c in rollout.clusters.values() if c.state is ClusterRolloutState.FAILED]
    message = f"{returned} node(s) returned to their previous version. {rollout.rec.message}"
    if failed:
        message += f"; clusters with failures: {', '.join(failed[:5])}"
    engine.rollout_to(tx, rollout, RolloutState.ROLLED_BACK, now, "RolledBack", message)


def progress_waves(engine: Engine, tx: SyncTx, rollout: Rollout, now: datetime) -> None:
    """Open, soak and close waves in order; finish the rollout after the last."""
    while rollout.state in (RolloutState.RUNNING, RolloutState.AWAITING_APPROVAL):
        index = scheduling.current_wave(rollout)
        if index is None:
            _finish(engine, tx, rollout, now)
            return
        wave = rollout.waves[index]
        if wave.state is WaveState.PENDING:
            if wave.requires_approval and wave.approved_at is None:
                engine.wave_to(tx, rollout, wave, WaveState.AWAITING_APPROVAL, now, "ApprovalRequired")
                engine.rollout_to(
                    tx,
                    rollout,
                    RolloutState.AWAITING_APPROVAL,
                    now,
                    "ApprovalRequired",
                    f"wave {index} waits for `approve --wave {index}`",
                )
                return
            engine.wave_to(tx, rollout, wave, WaveState.RUNNING, now, "Started")
        if wave.state is WaveState.AWAITING_APPROVAL:
            if wave.approved_at is None:
                return
            engine.wave_to(tx, rollout, wave, WaveState.RUNNING, now, "Approved")
        if rollout.state is RolloutState.AWAITING_APPROVAL:
            engine.rollout_to(tx, rollout, RolloutState.RUNNING, now, "Approved", f"wave {index} approved")
        members = [c for c in rollout.clusters.values() if c.wave == index]
        if wave.state is WaveState.RUNNING:
            if not all(c.state in WAVE_DONE_CLUSTER and not scheduling.cluster_outstanding(c) for c in members):
                return
            if any(c.state is ClusterRolloutState.SOAKING for c in members):
                wave.soak_until = now.timestamp() + rollout.spec.soak_s
                engine.wave_to(tx, rollout, wave, WaveState.SOAKING, now, "Soaking")
                return
        if wave.state is WaveState.SOAKING:
            if wave.soak_until is not None and now.timestamp() < wave.soak_until:
                return
            for cluster in members:
                if cluster.state is ClusterRolloutState.SOAKING:
                    engine.cluster_to(tx, rollout, cluster, ClusterRolloutState.SUCCEEDED, now, "Soaked")
        failed = any(c.state is ClusterRolloutState.FAILED for c in members)
        engine.wave_to(
            tx, rollout, wave, WaveState.COMPLETED_WITH_FAILURES if failed else WaveState.SUCCEEDED, now, "Done"
        )


def _finish(engine: Engine, tx: SyncTx, rollout: Rollout, now: datetime) -> None:
    clusters = list(rollout.clusters.values())
    failed = [c.cluster_id for c in clusters if c.state is ClusterRolloutState.FAILED]
    done = sum(1 for c in clusters if c.state is ClusterRolloutState.SUCCEEDED)
    skipped = sum(1 for c in clusters if c.state is ClusterRolloutState.SKIPPED)
    if failed:
        engine.rollout_to(
            tx,
            rollout,
            RolloutState.COMPLETED_WITH_FAILURES,
            now,
            "Done",
            f"{done} cluster(s) at {rollout.spec.target_version}, {len(failed)} failed ({', '.join(failed[:5])}), "
            f"{skipped} skipped; `retry` tries the failed ones again",
        )
    else:
        engine.rollout_to(
            tx,
            rollout,
            RolloutState.SUCCEEDED,
            now,
            "Done",
            f"{done} cluster(s) at {rollout.spec.target_version}" + (f", {skipped} skipped" if skipped else ""),
        )


def start_clusters(engine: Engine, tx: SyncTx, rollout: Rollout, now: datetime) -> None:
    """Start the clusters the wave, the concurrency limit, health and windows allow (I1, I7)."""
    if rollout.state is not RolloutState.RUNNING:
        return
    wave = scheduling.current_wave(rollout)
    if wave is not None and engine.windows(rollout):
        for cluster in rollout.clusters.values():
            if cluster.wave > wave:
                continue
            waiting = cluster.state is ClusterRolloutState.WAITING_WINDOW
            if cluster.state is ClusterRolloutState.PENDING or waiting:
                window = engine.window(rollout, cluster, now)
                opens = None if window.opens_at is None else window.opens_at.timestamp()
                if cluster.window_opens_at != opens:
                    cluster.window_opens_at = opens  # shown in status: when the window opens
                    engine.touch_cluster(rollout, cluster)
                is_open = window.open
                if not is_open and not waiting:
                    engine.cluster_to(tx, rollout, cluster, ClusterRolloutState.WAITING_WINDOW, now, "OutsideWindow")
                elif is_open and waiting:
                    engine.cluster_to(tx, rollout, cluster, ClusterRolloutState.PENDING, now, "WindowOpened")
    for cluster in scheduling.clusters_to_start(rollout, lambda c: engine.window_open(rollout, c, now), engine.health):
        has_cp = any(n.control_plane and not n.verified for n in cluster.nodes)
        to = ClusterRolloutState.UPGRADING_CONTROL_PLANE if has_cp else ClusterRolloutState.UPGRADING_WORKERS
        engine.cluster_to(tx, rollout, cluster, to, now, "Started")


def _rollback_turn(rollout: Rollout, cluster: ClusterRec) -> bool:
    """Clusters roll back at most max_concurrent_clusters at a time, in rollout order."""
    slots = rollout.spec.max_concurrent_clusters
    for other in rollout.clusters.values():
        if other.state is ClusterRolloutState.ROLLING_BACK:
            if other is cluster:
                return True
            slots -= 1
            if slots <= 0:
                return False
    return False


def issue_steps(engine: Engine, tx: SyncTx, rollout: Rollout, cluster: ClusterRec, epoch: int, now: datetime) -> None:
    """Issue what the cluster may do now (I1, I2, I7, I9)."""
    state = rollout.state
    running = state in (RolloutState.RUNNING, RolloutState.AWAITING_APPROVAL, RolloutState.ROLLING_BACK)
    may_continue = running and cluster.state is not ClusterRolloutState.FROZEN
    may_start = may_continue and cluster.state in (*_UPGRADING, ClusterRolloutState.ROLLING_BACK)
    if may_start and cluster.state is ClusterRolloutState.ROLLING_BACK:
        may_start = _rollback_turn(rollout, cluster)
    elif may_start:
        may_start = engine.window_open(rollout, cluster, now)
    if state is RolloutState.ABORTED:
        may_continue = may_start = False
    fleet = engine.fleet.get(cluster.cluster_id)
    limits = scheduling.Limits(rollout.spec.max_unavailable, may_start, may_continue)
    for node, step in scheduling.cluster_steps(cluster, fleet.nodes if fleet else {}, limits):
        engine.issue(tx, rollout, cluster, node, step, epoch, now)
