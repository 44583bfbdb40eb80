"""The rollout engine: applies decisions to the records, issues commands and emits events in one transaction.

Every method takes the open `SyncTx` of a `Store.run` work: state changes, the NodeStepCommands they
cause (outbox, Nats-Msg-Id = command id) and the progress events are committed together (I8). The
in-memory records are the single writer's cache of its rows; `flush` writes what changed, and a work
that fails marks the cache stale so the next work reloads it from the database.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from flotilla_contracts import catalogue
from flotilla_contracts.v1.agent import NodeStepCommand, StepKind, TargetVersions
from flotilla_contracts.v1.heartbeat import ClusterHealth
from flotilla_contracts.v1.upgrade_status import (
    Direction,
)
from flotilla_runtime.disruption import Policy, Watch, describe
from flotilla_runtime.integrity import StateRefused
from flotilla_runtime.logs import get_logger
from flotilla_runtime.store import SyncTx
from flotilla_upgrade_orchestrator import store as repo
from flotilla_upgrade_orchestrator.fleet import FleetCluster
from flotilla_upgrade_orchestrator.model import (
    ClusterRec,
    FailureRec,
    NodeRec,
    Rollout,
    command_id,
)
from flotilla_upgrade_orchestrator.timeouts import Timeouts
from flotilla_upgrade_orchestrator.transitions import Transitions
from flotilla_upgrade_orchestrator.windows import Window, parse_windows

T = TypeVar("T")
log = get_logger("flotilla.upgrade-orchestrator.engine")


@dataclass
class Engine(Transitions):
    """Rollouts and the fleet read model in memory, written through to the store by `flush`."""

    timeouts: Timeouts = field(default_factory=Timeouts)
    epoch_of: Callable[[str], int | None] = lambda _rollout_id: 1
    rollouts: dict[str, Rollout] = field(default_factory=dict)
    fleet: dict[str, FleetCluster] = field(default_factory=dict)
    inflight: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # command id -> rollout, cluster, node
    disruption: Watch = field(default_factory=lambda: Watch(Policy()))  # the fleet disruption rule's verdict
    dirty_disruption: bool = False
    command_key: bytes = b""  # keys command ids (model.command_id); loaded from the store, never sent
    stale: bool = True
    issued: int = 0
    _windows: dict[str, tuple[Window, ...]] = field(default_factory=dict)
    _dirty_rollouts: set[str] = field(default_factory=set)
    _dirty_clusters: set[tuple[str, str]] = field(default_factory=set)
    _dirty_nodes: dict[tuple[str, str, str], NodeRec] = field(default_factory=dict)
    _new_failures: list[tuple[str, FailureRec]] = field(default_factory=list)
    active_at: dict[str, float] = field(default_factory=dict)
    dirty_fleet: set[str] = field(default_factory=set)

    # --- the unit of work -------------------------------------------------------------------------------

    def transact(self, fn: Callable[[SyncTx], T]) -> Callable[[SyncTx], T]:
        """Wrap `fn` for `Store.run`: reload if stale, run, write what changed; a failure marks us stale."""

        def work(tx: SyncTx) -> T:
            if self.stale:
                self.load(tx)
            try:
                result = fn(tx)
                self.flush(tx)
            except BaseException:
                self.stale = True
                raise
            return result

        return work

    def load(self, tx: SyncTx) -> None:
        key = repo.load_command_key(tx)
        if key is None:
            raise StateRefused(
                "the upgrade-orchestrator's state database has no command-id key (table secrets, made once by "
                "migration 0002): the file is damaged or was edited. Restore it from a backup; a new key would "
                "not match the commands already sent, so none is made",
            )
        self.command_key = key
        self.rollouts = repo.load_rollouts(tx)
        self.fleet = repo.load_fleet(tx)
        self.disruption = Watch(self.disruption.policy, repo.load_disruption(tx))
        for member in self.fleet.values():
            self.watch(member)
        self.disruption.settle()  # the stored verdict stands until the next health change is judged
        self.dirty_disruption = False
        self.inflight = {}
        self._windows = {}
        for rollout in self.rollouts.values():
            for cluster in rollout.clusters.values():
                for node in cluster.nodes:
                    if node.in_flight is not None:
                        self.inflight[node.command_id] = (rollout.rollout_id, cluster.cluster_id, node.node_id)
        self._dirty_rollouts.clear()
        self._dirty_clusters.clear()
        self._dirty_nodes.clear()
        self._new_failures.clear()
        self.dirty_fleet.clear()
        self.stale = False

    def discard(self) -> None:
        """Forget changes not yet flushed (their transaction rolled back); reload before the next work."""
        self._dirty_rollouts.clear()
        self._dirty_clusters.clear()
        self._dirty_nodes.clear()
        self._new_failures.clear()
        self.dirty_fleet.clear()
        self.stale = True

    def flush(self, tx: SyncTx) -> None:
        for rollout_id in self._dirty_rollouts:
            repo.save_rollout(tx, self.rollouts[rollout_id].rec)
        for rollout_id, cluster_id in self._dirty_clusters:
            repo.save_cluster(tx, rollout_id, self.rollouts[rollout_id].clusters[cluster_id])
        if self._dirty_nodes:
            repo.save_nodes(tx, list(self._dirty_nodes.items()))
        for rollout_id, failure in self._new_failures:
            repo.add_failure(tx, rollout_id, failure)
        for cluster_id in self.dirty_fleet:
            repo.save_fleet_cluster(tx, self.fleet.get(cluster_id), cluster_id)
        if self.dirty_disruption:
            repo.save_disruption(tx, self.disruption.disrupted.values())
            self.dirty_disruption = False
        self._dirty_rollouts.clear()
        self._dirty_clusters.clear()
        self._dirty_nodes.clear()
        self._new_failures.clear()
        self.dirty_fleet.clear()

    # --- fleet disruption ------------------------------------------------------------------------------------

    def watch(self, cluster: FleetCluster) -> None:
        """Show the disruption rule a member cluster as it is now (or that it is no member)."""
        if not cluster.member:
            self.disruption.drop(cluster.cluster_id)
            return
        unreachable = cluster.health is ClusterHealth.UNREACHABLE
        since = (cluster.health_since or datetime.min.replace(tzinfo=UTC)) if unreachable else None
        self.disruption.put(cluster.cluster_id, cluster.labels, since)

    def disrupted_for(self, rollout: Rollout) -> str:
        """The disrupted groups that hold one of the rollout's clusters, in words ("" when none does)."""
        if not self.disruption.disrupted:
            return ""
        for cluster_id in rollout.clusters:
            fleet = self.fleet.get(cluster_id)
            if fleet is not None and self.disruption.holds(fleet.labels):
                return describe(self.disruption.disrupted.values())
        return ""

    # --- windows ------------------------------------------------------------------------------------

    def windows(self, rollout: Rollout) -> tuple[Window, ...]:
        found = self._windows.get(rollout.rollout_id)
        if found is None:
            found = self._windows[rollout.rollout_id] = tuple(parse_windows(rollout.spec.maintenance_windows))
        return found

    # --- issuing -----------------------------------------------------------------------------------------------

    def issue(
        self,
        tx: SyncTx,
        rollout: Rollout,
        cluster: ClusterRec,
        node: NodeRec,
        step: StepKind,
        epoch: int,
        now: datetime,
    ) -> None:
        """One NodeStepCommand, at most once per (rollout, node, step, attempt, direction) (I4, I6, I8)."""
        direction = Direction.ROLLBACK if node.rollback else Direction.FORWARD
        cid = command_id(
            self.command_key, rollout.rollout_id, cluster.cluster_id, node.node_id, step, node.attempt, direction.value
        )
        deadline = now + timedelta(seconds=self.timeouts.for_step(step, rollout))
        node.in_flight = step
        node.command_id = cid
        node.issued_at = now.timestamp()
        node.deadline = deadline.timestamp()
        node.updated_at = now.timestamp()
        self.touch_node(rollout, cluster, node)
        self.inflight[cid] = (rollout.rollout_id, cluster.cluster_id, node.node_id)
        self.mark_active(rollout, now)
        if not repo.record_command(tx, cid, rollout.rollout_id, cluster.cluster_id, node, step, epoch, now):
            # Issued before, maybe under its unkeyed id (before migration 0002): wait for that one's report.
            sent = repo.issued_command_id(tx, rollout.rollout_id, cluster.cluster_id, node, step) or cid
            if sent != cid:
                del self.inflight[cid]
                node.command_id = sent
                self.inflight[sent] = (rollout.rollout_id, cluster.cluster_id, node.node_id)
            log.error("command %s was already issued; not sending it again (I4)", sent)
            return
        command = self._command(rollout, cluster, node, step, cid, epoch, deadline, now)
        subject = catalogue.subject_for(NodeStepCommand, cluster_id=cluster.cluster_id, node_id=node.node_id)
        # The command (and so the agent's work and reports) joins the trace the rollout was started in.
        tx.emit(subject, command, msg_id=cid, trace_headers=rollout.rec.trace or None)
        self.issued += 1

    def resend(
        self, tx: SyncTx, rollout: Rollout, cluster: ClusterRec, node: NodeRec, epoch: int, now: datetime
    ) -> bool:
        """Send the node's command in flight again at `epoch` (same id and attempt, new deadline) after a
        takeover (failover.py); False if it already went out at that epoch or was never recorded (then the
        normal path issues it)."""
        step = node.in_flight
        sent_at = repo.command_epoch(tx, node.command_id)
        if step is None or sent_at is None or sent_at >= epoch:
            return False
        deadline = now + timedelta(seconds=self.timeouts.for_step(step, rollout))
        node.issued_at, node.deadline = now.timestamp(), deadline.timestamp()
        self.touch_node(rollout, cluster, node)
        repo.resent_command(tx, node.command_id, epoch, now)
        self.inflight[node.command_id] = (rollout.rollout_id, cluster.cluster_id, node.node_id)
        command = self._command(rollout, cluster, node, step, node.command_id, epoch, deadline, now)
        subject = catalogue.subject_for(NodeStepCommand, cluster_id=cluster.cluster_id, node_id=node.node_id)
        # A new message id: the stream would drop the same id as a duplicate; the agent keys on the command id.
        tx.emit(subject, command, msg_id=f"{node.command_id}-e{epoch}", trace_headers=rollout.rec.trace or None)
        return True

    @staticmethod
    def _command(
        rollout: Rollout,
        cluster: ClusterRec,
        node: NodeRec,
        step: StepKind,
        cid: str,
        epoch: int,
        deadline: datetime,
        now: datetime,
    ) -> NodeStepCommand:
        return NodeStepCommand(
            command_id=cid,
            rollout_id=rollout.rollout_id,
            epoch=epoch,
            cluster_id=cluster.cluster_id,
            node_id=node.node_id,
            node_name=node.node_name,
            step=step,
            target=TargetVersions(kubernetes_version=rollout.spec.target_version),
            previous=TargetVersions(kubernetes_version=node.from_version),
            kubeadm_action=node.kubeadm_action if step is StepKind.UPGRADE else None,
            drain=rollout.spec.drain,
            deadline=deadline,
            attempt=node.attempt,
            issued_at=now,
        )

    def command_rollout(self, tx: SyncTx, command_id: str, cluster_id: str, node_id: str) -> str | None:
        """The rollout of the command `command_id` if it was sent to exactly this cluster and node, else None."""
        where = self.inflight.get(command_id)
        if where is not None:
            return where[0] if where[1:] == (cluster_id, node_id) else None
        return repo.command_rollout(tx, command_id, cluster_id, node_id)
