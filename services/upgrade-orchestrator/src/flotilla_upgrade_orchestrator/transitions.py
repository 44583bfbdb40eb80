"""Every recorded change of the engine: marking rows to write, and the transitions of nodes, clusters,
waves and rollouts, freezes included, each announced by its event in the same transaction."""

from __future__ import annotations

from datetime import datetime

from flotilla_contracts import catalogue
from flotilla_contracts.envelope import Message
from flotilla_contracts.v1.agent import StepKind
from flotilla_contracts.v1.upgrade_status import (
    ClusterRolloutState,
    ClusterRolloutStateChanged,
    Direction,
    FreezeReason,
    NodeStepState,
    NodeStepStateChanged,
    RolloutFrozen,
    RolloutState,
    RolloutStateChanged,
    RolloutUnfrozen,
    WaveState,
    WaveStateChanged,
)
from flotilla_runtime.logs import get_logger
from flotilla_runtime.store import SyncTx
from flotilla_upgrade_orchestrator import machine, views
from flotilla_upgrade_orchestrator.model import (
    ACTIVE_CLUSTER,
    WAVE_DONE_CLUSTER,
    ClusterRec,
    FailureRec,
    FreezeRec,
    NodeRec,
    Rollout,
    WaveRec,
)

log = get_logger("flotilla.upgrade-orchestrator.engine")


class Transitions:
    """The engine's recorded moves; the engine holds the dirty sets they fill."""

    _dirty_rollouts: set[str]
    _dirty_clusters: set[tuple[str, str]]
    _dirty_nodes: dict[tuple[str, str, str], NodeRec]
    _new_failures: list[tuple[str, FailureRec]]
    active_at: dict[str, float]  # rollout -> last command issued, report received or (re)start (in memory)

    # --- marking and emitting ------------------------------------------------------------------------------

    def touch(self, rollout: Rollout, now: datetime) -> None:
        rollout.rec.updated_at = now.timestamp()
        self._dirty_rollouts.add(rollout.rollout_id)

    def touch_cluster(self, rollout: Rollout, cluster: ClusterRec) -> None:
        self._dirty_clusters.add((rollout.rollout_id, cluster.cluster_id))

    def touch_node(self, rollout: Rollout, cluster: ClusterRec, node: NodeRec) -> None:
        self._dirty_nodes[(rollout.rollout_id, cluster.cluster_id, node.node_id)] = node

    def mark_active(self, rollout: Rollout, now: datetime) -> None:
        """Something happened in the rollout: the no-progress clock (stall.py) starts again."""
        self.active_at[rollout.rollout_id] = now.timestamp()

    @staticmethod
    def emit(tx: SyncTx, message: Message, **ids: str) -> None:
        tx.emit(catalogue.subject_for(type(message), **ids), message)

    def node_to(
        self,
        tx: SyncTx,
        rollout: Rollout,
        cluster: ClusterRec,
        node: NodeRec,
        to: NodeStepState,
        now: datetime,
        *,
        step: StepKind | None = None,
        reason: str = "",
        message: str = "",
        kubelet: str | None = None,
        retry: bool = False,
    ) -> None:
        """Move a node (I4): forward, by a retry (`retry`, a new attempt) or in a rollback (its direction)."""
        before = node.state
        table = machine.NODE_RETRY if retry else machine.NODE
        if node.direction is Direction.ROLLBACK:
            table = machine.NODE_ROLLBACK
        machine.check(table, "node", f"{cluster.cluster_id}/{node.node_id}", before, to)
        node.state = to
        node.updated_at = now.timestamp()
        self.touch_node(rollout, cluster, node)
        self.emit(
            tx,
            NodeStepStateChanged(
                rollout_id=rollout.rollout_id,
                cluster_id=cluster.cluster_id,
                node_id=node.node_id,
                node_name=node.node_name,
                from_=before,
                to=to,
                direction=node.direction,
                step=step,
                reason=reason[:256],
                message=message[:4096],
                kubelet_version=kubelet,
                occurred_at=now,
            ),
            rollout_id=rollout.rollout_id,
            cluster_id=cluster.cluster_id,
            node_id=node.node_id,
        )

    def cluster_to(
        self,
        tx: SyncTx,
        rollout: Rollout,
        cluster: ClusterRec,
        to: ClusterRolloutState,
        now: datetime,
        reason: str = "",
        message: str = "",
    ) -> None:
        before = cluster.state
        if before is to:
            return
        machine.check(machine.CLUSTER, "cluster", f"{rollout.rollout_id}/{cluster.cluster_id}", before, to)
        cluster.state = to
        if to in ACTIVE_CLUSTER and cluster.started_at is None:
            cluster.started_at = now.timestamp()
        if to in WAVE_DONE_CLUSTER:
            cluster.finished_at = now.timestamp()
        self.touch_cluster(rollout, cluster)
        self.emit(
            tx,
            ClusterRolloutStateChanged(
                rollout_id=rollout.rollout_id,
                cluster_id=cluster.cluster_id,
                wave=cluster.wave,
                from_=before,
                to=to,
                reason=reason[:256],
                message=message[:4096],
                occurred_at=now,
            ),
            rollout_id=rollout.rollout_id,
            cluster_id=cluster.cluster_id,
        )

    def wave_to(
        self, tx: SyncTx, rollout: Rollout, wave: WaveRec, to: WaveState, now: datetime, reason: str = ""
    ) -> None:
        before = wave.state
        if before is to:
            return
        machine.check(machine.WAVE, "wave", f"{rollout.rollout_id}/{wave.index}", before, to)
        wave.state = to
        if to is WaveState.RUNNING and wave.started_at is None:
            wave.started_at = now.timestamp()
        if to in (WaveState.SUCCEEDED, WaveState.COMPLETED_WITH_FAILURES, WaveState.ABORTED):
            wave.finished_at = now.timestamp()
        self.touch(rollout, now)
        self.emit(
            tx,
            WaveStateChanged(
                rollout_id=rollout.rollout_id,
                wave=views.wave_status(rollout, wave),
                from_=before,
                to=to,
                reason=reason[:256],
                occurred_at=now,
            ),
            rollout_id=rollout.rollout_id,
            wave=str(wave.index),
        )

    def rollout_to(
        self, tx: SyncTx, rollout: Rollout, to: RolloutState, now: datetime, reason: str = "", message: str = ""
    ) -> None:
        before = rollout.rec.state
        if before is to:
            return
        machine.check(machine.ROLLOUT, "rollout", rollout.rollout_id, before, to)
        rollout.rec.state = to
        if to in (RolloutState.RUNNING, RolloutState.ROLLING_BACK):
            self.mark_active(rollout, now)
        if rollout.final:
            rollout.rec.finished_at = now.timestamp()
        else:
            rollout.rec.finished_at = None
        if message:
            rollout.rec.message = message
        self.touch(rollout, now)
        self.emit(
            tx,
            RolloutStateChanged(
                rollout=views.summary(rollout),
                from_=before,
                to=to,
                reason=reason[:256],
                message=message[:4096],
                occurred_at=now,
            ),
            rollout_id=rollout.rollout_id,
        )
        log.bind(rollout=rollout.rollout_id).info("rollout %s -> %s", before.value, to.value, extra={"why": reason})

    def record_failure(self, rollout: Rollout, failure: FailureRec) -> None:
        rollout.failures.append(failure)
        self._new_failures.append((rollout.rollout_id, failure))

    # --- freezes (I7) ------------------------------------------------------------------------------------------

    def freeze(
        self,
        tx: SyncTx,
        rollout: Rollout,
        reason: FreezeReason,
        message: str,
        now: datetime,
        *,
        cluster_id: str | None = None,
        node_id: str | None = None,
    ) -> None:
        """Stop all new disruption in the rollout, with the reason in status and in an event."""
        rolling_back = rollout.state is RolloutState.ROLLING_BACK and reason is not FreezeReason.NO_PROGRESS
        if rollout.rec.freeze is not None or rollout.final or rolling_back:
            return  # a rollback freezes only when it stalls: nothing else it meets stops it
        rec = FreezeRec(reason=reason, message=message, cluster_id=cluster_id, node_id=node_id, since=now.timestamp())
        rollout.rec.freeze = rec
        self.emit(
            tx,
            RolloutFrozen(rollout_id=rollout.rollout_id, freeze=views.at_freeze(rec), occurred_at=now),
            rollout_id=rollout.rollout_id,
        )
        if rollout.state is not RolloutState.PAUSED:
            rollout.rec.resume_state = rollout.state
            self.rollout_to(tx, rollout, RolloutState.FROZEN, now, reason.value, message)
        self.touch(rollout, now)

    def unfreeze(
        self, tx: SyncTx, rollout: Rollout, reason: str, message: str, now: datetime, *, resume: bool = True
    ) -> None:
        """End the rollout's freeze; a Frozen rollout goes back to what it did unless `resume` is False (the
        caller moves it on itself, as abort and rollback do: Frozen -> Aborted is one transition)."""
        rec = rollout.rec.freeze
        if rec is None:
            return
        rollout.rec.freeze = None
        self.emit(
            tx,
            RolloutUnfrozen(
                rollout_id=rollout.rollout_id,
                freeze=views.at_freeze(rec),
                reason=reason,
                message=message,
                occurred_at=now,
            ),
            rollout_id=rollout.rollout_id,
        )
        if rollout.state is RolloutState.FROZEN and resume:
            self.rollout_to(tx, rollout, rollout.rec.resume_state or RolloutState.RUNNING, now, reason, message)
        self.touch(rollout, now)

    def freeze_cluster(
        self,
        tx: SyncTx,
        rollout: Rollout,
        cluster: ClusterRec,
        reason: FreezeReason,
        message: str,
        now: datetime,
        node_id: str | None = None,
    ) -> None:
        if cluster.freeze is not None:
            return
        rec = FreezeRec(
            reason=reason, message=message, cluster_id=cluster.cluster_id, node_id=node_id, since=now.timestamp()
        )
        cluster.freeze = rec
        self.emit(
            tx,
            RolloutFrozen(rollout_id=rollout.rollout_id, freeze=views.at_freeze(rec), occurred_at=now),
            rollout_id=rollout.rollout_id,
        )
        if ClusterRolloutState.FROZEN in machine.CLUSTER[cluster.state]:
            # Only a working cluster becomes Frozen; one already winding down (aborted, skipped, failed)
            # keeps its state and only records the freeze (nothing new starts there anyway).
            cluster.resume_state = cluster.state
            self.cluster_to(tx, rollout, cluster, ClusterRolloutState.FROZEN, now, reason.value, message)
        self.touch_cluster(rollout, cluster)

    def unfreeze_cluster(
        self, tx: SyncTx, rollout: Rollout, cluster: ClusterRec, reason: str, message: str, now: datetime
    ) -> None:
        rec = cluster.freeze
        if rec is None:
            return
        cluster.freeze = None
        self.emit(
            tx,
            RolloutUnfrozen(
                rollout_id=rollout.rollout_id,
                freeze=views.at_freeze(rec),
                reason=reason,
                message=message,
                occurred_at=now,
            ),
            rollout_id=rollout.rollout_id,
        )
        if cluster.state is ClusterRolloutState.FROZEN:
            self.cluster_to(tx, rollout, cluster, cluster.resume_state or ClusterRolloutState.PENDING, now, reason)
        self.touch_cluster(rollout, cluster)
