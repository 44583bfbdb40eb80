"""The control commands: start, pause, resume, abort, approve, retry, skip and rollback.

Each runs inside one `Store.run` work: it checks the request against the rollout's state (refusing with
a code and a reason before anything moves), applies it through the engine, and lets the engine issue
what follows, all in one transaction.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from flotilla_contracts.errors import ErrorCode
from flotilla_contracts.v1.upgrade import (
    AbortRolloutRequest,
    ApproveWaveRequest,
    PauseRolloutRequest,
    ResumeRolloutRequest,
    StartRolloutReply,
    StartRolloutRequest,
)
from flotilla_contracts.v1.upgrade_status import (
    ClusterRolloutState,
    RolloutReply,
    RolloutStarted,
    RolloutState,
    WaveState,
)
from flotilla_runtime.errors import RequestError
from flotilla_runtime.store import SyncTx
from flotilla_upgrade_orchestrator import progress, views
from flotilla_upgrade_orchestrator import rollback as rollback_rules
from flotilla_upgrade_orchestrator import store as repo
from flotilla_upgrade_orchestrator.engine import Engine
from flotilla_upgrade_orchestrator.model import (
    FINAL_WAVE,
    ClusterRec,
    NodeRec,
    Rollout,
    RolloutRec,
    WaveRec,
)
from flotilla_upgrade_orchestrator.plan import Estimates, build_plan, start_refusal
from flotilla_upgrade_orchestrator.spec import CheckedSpec

DONE_CLUSTER = frozenset({ClusterRolloutState.SUCCEEDED, ClusterRolloutState.SKIPPED, ClusterRolloutState.ROLLED_BACK})


def busy_clusters(engine: Engine) -> dict[str, str]:
    """Clusters in a rollout that is not finished (or still giving nodes back), mapped to that rollout."""
    busy: dict[str, str] = {}
    for rollout in engine.rollouts.values():
        for cluster in rollout.clusters.values():
            if not rollout.final or any(n.in_flight or n.cordoned_by_us for n in cluster.nodes):
                busy[cluster.cluster_id] = rollout.rollout_id
    return busy


def get(engine: Engine, rollout_id: str) -> Rollout:
    rollout = engine.rollouts.get(rollout_id)
    if rollout is None:
        raise RequestError(ErrorCode.NOT_FOUND, f"no rollout {rollout_id}", field="rollout_id")
    return rollout


def reply(rollout: Rollout, message: str) -> RolloutReply:
    return RolloutReply(rollout=views.summary(rollout), message=message[:4096])


def conflict(rollout: Rollout, what: str) -> RequestError:
    return RequestError(
        ErrorCode.CONFLICT,
        f"cannot {what} rollout {rollout.rollout_id}: it is {rollout.state.value}",
        state=rollout.state.value,
    )


# --- start ---------------------------------------------------------------------------------------------------


def start(
    engine: Engine,
    tx: SyncTx,
    request: StartRolloutRequest,
    checked: CheckedSpec,
    estimates: Estimates,
    now: datetime,
) -> StartRolloutReply:
    """Pin the plan and start; a repeated request id answers with the rollout it already started."""
    existing = repo.rollout_for_request(tx, request.request_id)
    if existing is not None and existing in engine.rollouts:
        rollout = engine.rollouts[existing]
        return StartRolloutReply(rollout_id=existing, plan=views.compact(rollout.plan))
    plan = build_plan(checked, engine.fleet, busy_clusters(engine), estimates)
    refusal = start_refusal(plan)
    if refusal is not None:
        code, message = refusal
        raise RequestError(
            code,
            message,
            refusals=[
                {"reason": r.reason.value, "cluster_id": r.cluster_id, "message": r.message} for r in plan.refusals[:50]
            ],
        )
    spec = checked.spec
    stamp = now.timestamp()
    rollout_id = f"r-{uuid.uuid4().hex[:12]}"
    rec = RolloutRec(
        rollout_id=rollout_id,
        name=spec.name,
        request_id=request.request_id,
        spec=spec,
        created_at=stamp,
        started_at=stamp,
        updated_at=stamp,
        waves=[WaveRec(index=w.index, name=w.name, requires_approval=w.requires_approval) for w in plan.waves],
        trace=tx.trace_headers,
    )
    rollout = Rollout(rec=rec, plan=plan)
    for wave in plan.waves:
        for order, planned in enumerate(wave.clusters):
            nodes = [
                NodeRec(
                    node_id=p.node_id,
                    node_name=p.node_name,
                    role=p.role,
                    order=p.order,
                    from_version=p.from_version,
                    kubeadm_action=p.kubeadm_action,
                )
                for p in (*planned.control_plane, *planned.workers)
            ]
            rollout.clusters[planned.cluster_id] = ClusterRec(
                cluster_id=planned.cluster_id,
                name=planned.name,
                wave=wave.index,
                order=order,
                from_version=planned.from_version,
                target_version=planned.target_version,
                nodes=nodes,
            )
    rec.patch_level = rollback_rules.patch_level(rollout)
    engine.rollouts[rollout_id] = rollout
    repo.insert_rollout(tx, rollout)
    shown = views.compact(plan)
    engine.emit(
        tx, RolloutStarted(rollout_id=rollout_id, spec=spec, plan=shown, occurred_at=now), rollout_id=rollout_id
    )
    rec.state = RolloutState.PENDING
    engine.rollout_to(
        tx,
        rollout,
        RolloutState.RUNNING,
        now,
        "Started",
        f"{plan.clusters_total} cluster(s), {plan.nodes_total} node(s) to {spec.target_version} in {len(plan.waves)} "
        "wave(s)",
    )
    progress.advance(engine, tx, rollout, now)
    return StartRolloutReply(rollout_id=rollout_id, plan=shown)


# --- pause, resume, abort, approve -----------------------------------------------------------------------------


def pause(engine: Engine, tx: SyncTx, request: PauseRolloutRequest, now: datetime) -> RolloutReply:
    rollout = get(engine, request.rollout_id)
    if rollout.state is RolloutState.PAUSED:
        return reply(rollout, "already paused")
    if rollout.state not in (RolloutState.RUNNING, RolloutState.AWAITING_APPROVAL, RolloutState.FROZEN):
        raise conflict(rollout, "pause")
    if rollout.state is not RolloutState.FROZEN:
        rollout.rec.resume_state = rollout.state
    engine.rollout_to(tx, rollout, RolloutState.PAUSED, now, "Paused", request.reason or "paused by a user")
    inflight = _in_flight(rollout)
    return reply(rollout, f"paused: no new disruption; {inflight} step(s) in flight finish")


def resume(engine: Engine, tx: SyncTx, request: ResumeRolloutRequest, now: datetime) -> RolloutReply:
    rollout = get(engine, request.rollout_id)
    if rollout.state in (RolloutState.RUNNING, RolloutState.AWAITING_APPROVAL) and rollout.rec.freeze is None:
        return reply(rollout, f"already {rollout.state.value}: nothing to resume")  # e.g. a skip lifted the freeze
    if rollout.state not in (RolloutState.PAUSED, RolloutState.FROZEN):
        raise conflict(rollout, "resume")
    engine.unfreeze(tx, rollout, "Resumed", "resumed by a user", now)
    recovered = 0
    for cluster in rollout.clusters.values():
        fleet = engine.fleet.get(cluster.cluster_id)
        still = [n for n in cluster.not_ready if fleet is None or n not in fleet.nodes or not fleet.nodes[n].available]
        if len(still) != len(cluster.not_ready):
            recovered += len(cluster.not_ready) - len(still)
            cluster.not_ready = still  # a user resuming acknowledges nodes that are Ready again
            engine.touch_cluster(rollout, cluster)
    for cluster in rollout.clusters.values():
        if cluster.freeze is not None and engine.health(cluster.cluster_id).value != "Unreachable":
            engine.unfreeze_cluster(tx, rollout, cluster, "Resumed", "resumed by a user", now)
    back = rollout.rec.resume_state or RolloutState.RUNNING
    if back in (RolloutState.FROZEN, RolloutState.PAUSED):
        back = RolloutState.RUNNING
    engine.rollout_to(tx, rollout, back, now, "Resumed", "resumed by a user")
    progress.advance(engine, tx, rollout, now)
    if rollout.state is RolloutState.FROZEN and rollout.rec.freeze is not None:
        return reply(rollout, f"resumed, but it froze again at once: {rollout.rec.freeze.message}")
    note = f"; {recovered} node(s) Ready again no longer count against the budget" if recovered else ""
    return reply(rollout, "resumed" + note)


def abort(engine: Engine, tx: SyncTx, request: AbortRolloutRequest, now: datetime) -> RolloutReply:
    rollout = get(engine, request.rollout_id)
    if rollout.final or rollout.state is RolloutState.ROLLING_BACK:
        raise conflict(rollout, "abort")
    engine.unfreeze(tx, rollout, "Aborted", "the rollout was aborted", now, resume=False)  # Frozen -> Aborted
    for wave in rollout.waves:
        if wave.state not in FINAL_WAVE:
            engine.wave_to(tx, rollout, wave, WaveState.ABORTED, now, "Aborted")
    for cluster in rollout.clusters.values():
        if cluster.state is ClusterRolloutState.SOAKING:
            engine.cluster_to(
                tx, rollout, cluster, ClusterRolloutState.SUCCEEDED, now, "Aborted", "upgraded before abort"
            )
        elif cluster.state not in (*DONE_CLUSTER, ClusterRolloutState.FAILED):
            engine.cluster_to(tx, rollout, cluster, ClusterRolloutState.ABORTED, now, "Aborted", request.reason)
        wind_down(engine, rollout, cluster)
    inflight = _in_flight(rollout)
    give_back = sum(1 for c in rollout.clusters.values() for n in c.nodes if n.cordoned_by_us)
    message = (
        f"aborted: nothing new starts; {inflight} step(s) in flight finish and {give_back} node(s) we cordoned "
        "are being uncordoned" + (f" ({request.reason})" if request.reason else "")
    )
    engine.rollout_to(tx, rollout, RolloutState.ABORTED, now, "Aborted", message)
    progress.advance(engine, tx, rollout, now)
    return reply(rollout, message)


def approve(engine: Engine, tx: SyncTx, request: ApproveWaveRequest, now: datetime) -> RolloutReply:
    rollout = get(engine, request.rollout_id)
    if request.wave >= len(rollout.waves):
        raise RequestError(
            ErrorCode.NOT_FOUND,
            f"rollout {rollout.rollout_id} has {len(rollout.waves)} wave(s), numbered from 0",
            field="wave",
        )
    if rollout.final or rollout.state is RolloutState.ROLLING_BACK:
        raise conflict(rollout, "approve a wave of")
    wave = rollout.waves[request.wave]
    if wave.state in FINAL_WAVE:
        raise RequestError(ErrorCode.CONFLICT, f"wave {wave.index} is already {wave.state.value}", field="wave")
    if wave.approved_at is not None:
        return reply(rollout, f"wave {wave.index} was already approved")
    wave.approved_at = now.timestamp()
    engine.touch(rollout, now)
    progress.advance(engine, tx, rollout, now)
    note = "" if wave.requires_approval else " (it did not require approval)"
    return reply(rollout, f"wave {wave.index} approved{note}")


# --- helpers -----------------------------------------------------------------------------------------------


def cluster_of(rollout: Rollout, cluster_id: str) -> ClusterRec:
    cluster = rollout.clusters.get(cluster_id)
    if cluster is None:
        raise RequestError(
            ErrorCode.NOT_FOUND, f"cluster {cluster_id} is not in rollout {rollout.rollout_id}", field="cluster_id"
        )
    return cluster


def wind_down(engine: Engine, rollout: Rollout, cluster: ClusterRec) -> None:
    for node in cluster.nodes:
        if not node.succeeded and not node.wind_down:
            node.wind_down = True
            engine.touch_node(rollout, cluster, node)


def _in_flight(rollout: Rollout) -> int:
    return sum(1 for c in rollout.clusters.values() for n in c.nodes if n.in_flight is not None)
