"""Read-only answers: the plan (dry run), a rollout's status, and the list of rollouts."""

from __future__ import annotations

from flotilla_contracts.errors import ErrorCode
from flotilla_contracts.v1.upgrade import PlanReply
from flotilla_contracts.v1.upgrade_status import (
    ListRolloutsReply,
    ListRolloutsRequest,
    RolloutStatusReply,
    RolloutStatusRequest,
)
from flotilla_runtime.errors import RequestError
from flotilla_upgrade_orchestrator import control, scheduling, views, writer
from flotilla_upgrade_orchestrator.engine import Engine
from flotilla_upgrade_orchestrator.plan import Estimates, build_plan
from flotilla_upgrade_orchestrator.spec import CheckedSpec
from flotilla_upgrade_orchestrator.writer import LeaseView

MAX_FAILURES = 500


def plan(engine: Engine, checked: CheckedSpec, estimates: Estimates) -> PlanReply:
    return PlanReply(plan=views.compact(build_plan(checked, engine.fleet, control.busy_clusters(engine), estimates)))


def _position(cursor: str) -> int:
    if not cursor:
        return 0
    if not cursor.isdigit():
        raise RequestError(ErrorCode.INVALID_FIELD, "cursor is not one this service returned", field="cursor")
    return int(cursor)


def status(engine: Engine, request: RolloutStatusRequest, lease: LeaseView | None = None) -> RolloutStatusReply:
    """The rollout's status; `lease` (this replica's view of the rollout's lease) fills in who writes it."""
    rollout = control.get(engine, request.rollout_id)
    clusters = list(rollout.clusters.values())
    if request.cluster_id is not None:
        clusters = [c for c in clusters if c.cluster_id == request.cluster_id]
        if not clusters:
            raise RequestError(
                ErrorCode.NOT_FOUND,
                f"cluster {request.cluster_id} is not in rollout {rollout.rollout_id}",
                field="cluster_id",
            )
    start = _position(request.cursor)
    page = clusters[start : start + request.limit]
    more = start + request.limit < len(clusters)
    shown = []
    for cluster in page:
        fleet = engine.fleet.get(cluster.cluster_id)
        down = len(scheduling.unavailable(cluster, fleet.nodes if fleet else {}))
        shown.append(views.cluster_status(cluster, down, request.include_nodes))
    return RolloutStatusReply(
        rollout=views.summary(rollout),
        spec=rollout.spec,
        waves=[views.wave_status(rollout, w) for w in rollout.waves],
        clusters=shown,
        failures=[views.failure(f) for f in rollout.failures[-MAX_FAILURES:]],
        next_cursor=str(start + request.limit) if more else "",
        writer=writer.describe(rollout, lease) if lease is not None else None,
    )


def list_rollouts(engine: Engine, request: ListRolloutsRequest) -> ListRolloutsReply:
    chosen = sorted(engine.rollouts.values(), key=lambda r: (r.rec.created_at, r.rollout_id), reverse=True)
    if request.states:
        wanted = set(request.states)
        chosen = [r for r in chosen if r.state in wanted]
    start = _position(request.cursor)
    page = chosen[start : start + request.limit]
    more = start + request.limit < len(chosen)
    return ListRolloutsReply(
        rollouts=[views.summary(r) for r in page], next_cursor=str(start + request.limit) if more else ""
    )
