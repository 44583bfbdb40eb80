"""Records to the contract's status shapes: summaries, waves, clusters, nodes, freezes, failures."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from flotilla_contracts.v1.upgrade import UpgradePlan
from flotilla_contracts.v1.upgrade_status import (
    ClusterRolloutState,
    ClusterStatus,
    Counts,
    Failure,
    Freeze,
    NodeStatus,
    NodeStepState,
    RolloutSummary,
    WaveStatus,
)
from flotilla_upgrade_orchestrator.model import (
    ACTIVE_CLUSTER,
    ClusterRec,
    FailureRec,
    FreezeRec,
    NodeRec,
    Rollout,
    WaveRec,
)
from flotilla_upgrade_orchestrator.scheduling import current_wave

_CLUSTER_DONE = frozenset({ClusterRolloutState.SUCCEEDED, ClusterRolloutState.ROLLED_BACK})
_CLUSTER_SKIPPED = frozenset({ClusterRolloutState.SKIPPED, ClusterRolloutState.ABORTED})


def ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def at(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


def freeze(rec: FreezeRec | None) -> Freeze | None:
    return None if rec is None else at_freeze(rec)


def at_freeze(rec: FreezeRec) -> Freeze:
    return Freeze(
        reason=rec.reason, message=rec.message, cluster_id=rec.cluster_id, node_id=rec.node_id, since=at(rec.since)
    )


def cluster_counts(clusters: list[ClusterRec]) -> Counts:
    pending = in_progress = succeeded = failed = skipped = 0
    for c in clusters:
        if c.state in _CLUSTER_DONE or c.state is ClusterRolloutState.SOAKING:
            succeeded += 1
        elif c.state is ClusterRolloutState.FAILED:
            failed += 1
        elif c.state in _CLUSTER_SKIPPED:
            skipped += 1
        elif c.state in ACTIVE_CLUSTER:
            in_progress += 1
        else:
            pending += 1
    return Counts(
        total=len(clusters),
        pending=pending,
        in_progress=in_progress,
        succeeded=succeeded,
        failed=failed,
        skipped=skipped,
    )


def node_outcome(cluster: ClusterRec, node: NodeRec) -> str:
    """pending, in_progress, succeeded, failed or skipped; during a rollback, succeeded means returned."""
    if node.state is NodeStepState.FAILED:
        return "failed"
    if node.rollback:
        if node.rolled_back and not node.cordoned_by_us:
            return "succeeded"
        stopped = node.wind_down and node.in_flight is None and not node.cordoned_by_us
        return "skipped" if stopped else "in_progress"
    if node.succeeded:
        return "succeeded"
    busy = node.in_flight is not None or node.cordoned_by_us
    if (node.wind_down or cluster.state in _CLUSTER_SKIPPED) and not busy:
        return "skipped"
    if busy or node.state is not NodeStepState.PENDING:
        return "in_progress"
    return "pending"


def node_counts(clusters: list[ClusterRec]) -> Counts:
    tally = {"pending": 0, "in_progress": 0, "succeeded": 0, "failed": 0, "skipped": 0}
    total = 0
    for c in clusters:
        for n in c.nodes:
            tally[node_outcome(c, n)] += 1
            total += 1
    return Counts(total=total, **tally)


def summary(rollout: Rollout) -> RolloutSummary:
    rec = rollout.rec
    clusters = list(rollout.clusters.values())
    shown = rec.freeze or next((c.freeze for c in clusters if c.freeze is not None), None)
    return RolloutSummary(
        rollout_id=rec.rollout_id,
        name=rec.name,
        target_version=rec.spec.target_version,
        state=rec.state,
        freeze=freeze(shown),
        current_wave=current_wave(rollout),
        waves_total=len(rec.waves),
        clusters=cluster_counts(clusters),
        nodes=node_counts(clusters),
        created_at=at(rec.created_at),
        started_at=ts(rec.started_at),
        finished_at=ts(rec.finished_at),
        updated_at=at(rec.updated_at),
    )


def wave_status(rollout: Rollout, wave: WaveRec) -> WaveStatus:
    members = [c for c in rollout.clusters.values() if c.wave == wave.index]
    return WaveStatus(
        index=wave.index,
        name=wave.name,
        state=wave.state,
        clusters=cluster_counts(members),
        requires_approval=wave.requires_approval,
        approved_at=ts(wave.approved_at),
        soak_until=ts(wave.soak_until),
        started_at=ts(wave.started_at),
        finished_at=ts(wave.finished_at),
    )


def node_status(node: NodeRec) -> NodeStatus:
    return NodeStatus(
        node_id=node.node_id,
        node_name=node.node_name,
        role=node.role,
        state=node.state,
        direction=node.direction,
        step_in_flight=node.in_flight,
        from_version=node.from_version,
        current_version=node.current_version or node.from_version,
        cordoned_by_us=node.cordoned_by_us,
        attempts=node.attempt,
        failure=node.failure,
        updated_at=ts(node.updated_at or None),
    )


def cluster_status(cluster: ClusterRec, unavailable: int, with_nodes: bool) -> ClusterStatus:
    return ClusterStatus(
        cluster_id=cluster.cluster_id,
        wave=cluster.wave,
        state=cluster.state,
        from_version=cluster.from_version,
        target_version=cluster.target_version,
        nodes_total=len(cluster.nodes),
        nodes_done=sum(1 for n in cluster.nodes if n.succeeded or (n.rolled_back and not n.cordoned_by_us)),
        nodes_failed=sum(1 for n in cluster.nodes if n.state is NodeStepState.FAILED),
        nodes_unavailable=unavailable,
        freeze=freeze(cluster.freeze),
        failure=cluster.failure,
        waiting=cluster.waiting,
        window_opens_at=ts(cluster.window_opens_at),
        started_at=ts(cluster.started_at),
        finished_at=ts(cluster.finished_at),
        nodes=[node_status(n) for n in cluster.nodes] if with_nodes else [],
    )


def failure(rec: FailureRec) -> Failure:
    return Failure(
        cluster_id=rec.cluster_id,
        node_id=rec.node_id,
        step=rec.step,
        reason=rec.reason[:256],
        message=rec.message[:4096],
        occurred_at=at(rec.at),
    )


# Replies and events travel in one NATS message (1 MiB by default): a big plan drops its node lists.
MAX_PLAN_BYTES = 600 * 1024


def compact(plan: UpgradePlan, limit: int = MAX_PLAN_BYTES) -> UpgradePlan:
    """The plan as it fits in one message: whole when small; else without node lists, then without clusters."""
    if len(msgspec.json.encode(plan)) <= limit:
        return plan
    waves = [
        msgspec.structs.replace(
            wave,
            clusters=[
                msgspec.structs.replace(
                    c, control_plane=[], workers=[], skew_checks=[k for k in c.skew_checks if not k.ok]
                )
                for c in wave.clusters
            ],
        )
        for wave in plan.waves
    ]
    slim = msgspec.structs.replace(plan, waves=waves)
    if len(msgspec.json.encode(slim)) <= limit:
        return slim
    return msgspec.structs.replace(
        plan, waves=[msgspec.structs.replace(w, clusters=[]) for w in plan.waves], refusals=plan.refusals[:200]
    )
