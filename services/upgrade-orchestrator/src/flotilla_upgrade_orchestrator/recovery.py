"""Getting a rollout past trouble: retry failed clusters against the pinned target, skip a cluster, and
roll back (patch-level: every upgraded node; minor: workers only, the control plane stays, said plainly)."""

from __future__ import annotations

from datetime import datetime

from flotilla_contracts.errors import ErrorCode
from flotilla_contracts.v1.upgrade import RetryRequest, RollbackRequest, SkipClusterRequest
from flotilla_contracts.v1.upgrade_status import (
    ClusterRolloutState,
    Direction,
    NodeStepState,
    RolloutReply,
    RolloutState,
    WaveState,
)
from flotilla_runtime.errors import RequestError
from flotilla_runtime.store import SyncTx
from flotilla_upgrade_orchestrator import progress, retries
from flotilla_upgrade_orchestrator import rollback as rollback_rules
from flotilla_upgrade_orchestrator.control import DONE_CLUSTER, cluster_of, conflict, get, reply, wind_down
from flotilla_upgrade_orchestrator.engine import Engine
from flotilla_upgrade_orchestrator.model import FINAL_WAVE, ClusterRec, NodeRec, Rollout


def retry(engine: Engine, tx: SyncTx, request: RetryRequest, now: datetime) -> RolloutReply:
    """Reopen failed clusters now; queue the retry of one still settling after a node failed (retries.py)."""
    rollout = get(engine, request.rollout_id)
    if rollout.state in retries.CLOSED:
        raise conflict(rollout, "retry")
    if request.cluster_id is not None:
        cluster_of(rollout, request.cluster_id)
    decision = retries.decide(rollout, request.cluster_id)
    if decision.refusal:
        if request.cluster_id is not None:
            raise RequestError(ErrorCode.CONFLICT, decision.refusal, field="cluster_id")
        raise RequestError(ErrorCode.CONFLICT, decision.refusal)
    nodes = sum(progress.reopen(engine, tx, rollout, cluster, now) for cluster in decision.now)
    for cluster in decision.queued:
        if not cluster.retry_queued:
            cluster.retry_queued = True
            engine.touch_cluster(rollout, cluster)
    if decision.now and rollout.state is RolloutState.COMPLETED_WITH_FAILURES:
        engine.rollout_to(tx, rollout, RolloutState.RUNNING, now, "Retry", "failed clusters are tried again")
    progress.lift_budget_freeze(engine, tx, rollout, "Retried", now)
    progress.advance(engine, tx, rollout, now)
    return reply(rollout, _retry_message(rollout, decision, nodes))


def _retry_message(rollout: Rollout, decision: retries.RetryDecision, nodes: int) -> str:
    targets = [*decision.now, *decision.queued]
    ids = ", ".join(c.cluster_id for c in targets[:10])
    message = f"retrying {len(targets)} cluster(s) ({ids}) against the pinned target {rollout.spec.target_version}"
    waiting = [c for c in decision.queued if c.retry_queued]
    # A queued retry that ran at once (its cluster settled in this very advance) reopened its unfinished nodes.
    nodes += sum(1 for c in decision.queued if not c.retry_queued for n in c.nodes if not n.succeeded)
    if not waiting:
        return message + f"; {nodes} node(s) start a new attempt"
    if decision.now:
        message += f"; {nodes} node(s) start a new attempt now"
    shown = ", ".join(f"{c.cluster_id} ({retries.unsettled(c)} node(s))" for c in waiting[:10])
    message += (
        f"; {len(waiting)} cluster(s) still finish steps in flight and give nodes back after a node failed: "
        f"{shown}; each is retried as soon as it settles"
    )
    if rollout.state is RolloutState.FROZEN and rollout.rec.freeze is not None:
        message += f"; until then the rollout stays Frozen ({rollout.rec.freeze.reason.value})"
    return message


def skip(engine: Engine, tx: SyncTx, request: SkipClusterRequest, now: datetime) -> RolloutReply:
    rollout = get(engine, request.rollout_id)
    cluster = cluster_of(rollout, request.cluster_id)
    if rollout.state in (RolloutState.ABORTED, RolloutState.ROLLED_BACK, RolloutState.ROLLING_BACK):
        raise conflict(rollout, "skip a cluster of")
    if cluster.state in DONE_CLUSTER or cluster.state is ClusterRolloutState.SOAKING:
        raise RequestError(
            ErrorCode.CONFLICT,
            f"cluster {cluster.cluster_id} is {cluster.state.value}: nothing to skip",
            field="cluster_id",
        )
    wind_down(engine, rollout, cluster)
    engine.cluster_to(
        tx, rollout, cluster, ClusterRolloutState.SKIPPED, now, "Skipped", request.reason or "skipped by a user"
    )
    if rollout.state is RolloutState.COMPLETED_WITH_FAILURES:
        engine.rollout_to(tx, rollout, RolloutState.RUNNING, now, "Skip")
        wave = rollout.waves[cluster.wave]
        if wave.state is WaveState.COMPLETED_WITH_FAILURES:
            engine.wave_to(tx, rollout, wave, WaveState.RUNNING, now, "Skip")
    frozen = rollout.rec.freeze
    progress.lift_budget_freeze(engine, tx, rollout, "Skipped", now)
    progress.advance(engine, tx, rollout, now)
    busy = sum(1 for n in cluster.nodes if n.in_flight or n.cordoned_by_us)
    lifted = frozen is not None and rollout.rec.freeze is None
    return reply(
        rollout,
        f"cluster {cluster.cluster_id} skipped; it no longer counts against the failure budget"
        + (f"; {busy} node(s) of ours there are being given back" if busy else "")
        + (
            f"; the failure budget holds again, so the {frozen.reason.value} freeze is lifted and the rollout is "
            f"{rollout.state.value} (no resume needed)"
            if lifted and frozen is not None
            else ""
        )
        + (f"; the rollout stays Frozen ({rollout.rec.freeze.reason.value})" if rollout.rec.freeze else ""),
    )


def rollback(engine: Engine, tx: SyncTx, request: RollbackRequest, now: datetime) -> RolloutReply:
    rollout = get(engine, request.rollout_id)
    if rollout.state in (RolloutState.ROLLING_BACK, RolloutState.ROLLED_BACK):
        raise conflict(rollout, "roll back")
    decision = rollback_rules.decide(rollout)
    message = decision.message + (f" ({request.reason})" if request.reason else "")
    engine.unfreeze(tx, rollout, "RollingBack", "rollback requested", now, resume=False)
    for wave in rollout.waves:
        if wave.state not in FINAL_WAVE:
            engine.wave_to(tx, rollout, wave, WaveState.ABORTED, now, "RollingBack")
    for cluster in rollout.clusters.values():
        returning = set(decision.returns.get(cluster.cluster_id, []))
        for node in cluster.nodes:
            if node.node_id in returning:
                node.rollback, node.direction, node.wind_down = True, Direction.ROLLBACK, False
                node.attempt += 1
                engine.touch_node(rollout, cluster, node)
                _reopen_failed_for_rollback(engine, tx, rollout, cluster, node, now)
            elif not node.succeeded:
                node.wind_down = True
                engine.touch_node(rollout, cluster, node)
        if returning:
            if cluster.state is ClusterRolloutState.FROZEN:
                cluster.resume_state = ClusterRolloutState.ROLLING_BACK
            else:
                engine.cluster_to(tx, rollout, cluster, ClusterRolloutState.ROLLING_BACK, now, "RollingBack")
        elif cluster.state is ClusterRolloutState.SOAKING:
            engine.cluster_to(tx, rollout, cluster, ClusterRolloutState.SUCCEEDED, now, "RollingBack")
        elif cluster.state not in (*DONE_CLUSTER, ClusterRolloutState.FAILED):
            engine.cluster_to(tx, rollout, cluster, ClusterRolloutState.ABORTED, now, "RollingBack")
    rollout.rec.resume_state = None
    engine.rollout_to(tx, rollout, RolloutState.ROLLING_BACK, now, "Rollback", message)
    progress.advance(engine, tx, rollout, now)
    return reply(rollout, message)


def _reopen_failed_for_rollback(
    engine: Engine, tx: SyncTx, rollout: Rollout, cluster: ClusterRec, node: NodeRec, now: datetime
) -> None:
    """A node that failed after its version moved (verify, uncordon) is returned from where it failed.

    Left Failed it would get no rollback step and, still cordoned, hold the cluster's budget: the rollback
    would wait forever. Its forward failure stays in the rollout's failures; a rollback failure is new.
    """
    if node.state is not NodeStepState.FAILED or node.resume_state is None:
        return
    to = node.resume_state
    why = f"rollback returns it from {to.value} (it had failed: {node.failure})"
    node.failed_step, node.failure, node.resume_state = None, "", None
    engine.node_to(tx, rollout, cluster, node, to, now, reason="RollingBack", message=why)
