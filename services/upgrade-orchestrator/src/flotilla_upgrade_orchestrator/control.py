"""The control commands: start, pause, resume, abort and approve (retry, skip, rollback: recovery.py).

Each runs inside one `Store.run` work: it finds the rollout, hands the command to `decide` (through
applier.run, which refuses with a code and a reason before anything moves, or applies the decision and
everything it leads to) and answers with the rollout as it now is, all in one transaction.
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
    RolloutReply,
    RolloutStarted,
    RolloutState,
)
from flotilla_runtime.errors import RequestError
from flotilla_runtime.store import SyncTx
from flotilla_upgrade_orchestrator import applier, views
from flotilla_upgrade_orchestrator import rollback as rollback_rules
from flotilla_upgrade_orchestrator import store as repo
from flotilla_upgrade_orchestrator.decide import facts
from flotilla_upgrade_orchestrator.engine import Engine
from flotilla_upgrade_orchestrator.model import (
    ClusterRec,
    NodeRec,
    Rollout,
    RolloutRec,
    WaveRec,
)
from flotilla_upgrade_orchestrator.plan import Estimates, build_plan, start_refusal
from flotilla_upgrade_orchestrator.spec import CheckedSpec


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
    message = (
        f"{plan.clusters_total} cluster(s), {plan.nodes_total} node(s) to {spec.target_version} in "
        f"{len(plan.waves)} wave(s)"
    )
    applier.run(engine, tx, rollout, facts.Started(message), now)
    return StartRolloutReply(rollout_id=rollout_id, plan=shown)


# --- pause, resume, abort, approve -----------------------------------------------------------------------------


def pause(engine: Engine, tx: SyncTx, request: PauseRolloutRequest, now: datetime) -> RolloutReply:
    rollout = get(engine, request.rollout_id)
    return reply(rollout, applier.run(engine, tx, rollout, facts.Pause(request, tx.actor), now))


def resume(engine: Engine, tx: SyncTx, request: ResumeRolloutRequest, now: datetime) -> RolloutReply:
    rollout = get(engine, request.rollout_id)
    message = applier.run(engine, tx, rollout, facts.Resume(request, tx.actor), now)
    if rollout.state is RolloutState.FROZEN and rollout.rec.freeze is not None:
        message = f"resumed, but it froze again at once: {rollout.rec.freeze.message}"
    return reply(rollout, message)


def abort(engine: Engine, tx: SyncTx, request: AbortRolloutRequest, now: datetime) -> RolloutReply:
    rollout = get(engine, request.rollout_id)
    return reply(rollout, applier.run(engine, tx, rollout, facts.Abort(request), now))


def approve(engine: Engine, tx: SyncTx, request: ApproveWaveRequest, now: datetime) -> RolloutReply:
    rollout = get(engine, request.rollout_id)
    return reply(rollout, applier.run(engine, tx, rollout, facts.Approve(request), now))
