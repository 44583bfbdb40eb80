"""The read model of clusters, fed only by registration and heartbeat events, and the re-placement they cause.

A cluster counts once registration says it is Approved. Labels and taints come from registration's
lifecycle events, health and allocatable capacity from the heartbeat service. A change re-places the
subscriptions placed on the cluster or whose selector matches it (old or new labels), with its reason.

Fleet disruption (flotilla_runtime.disruption): while a group is disrupted its Unreachable clusters keep their
placements (their health taints keep new placements off but evict nothing: fleet.ClusterView.held); the change
of verdict is announced (FleetDisrupted / FleetRecovered), and on recovery what is still Unreachable may move
again, its tolerations counted from the recovery (engine.view_of).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from flotilla_contracts import catalogue, subjects
from flotilla_contracts.subjects import Service
from flotilla_contracts.v1.common import Taint
from flotilla_contracts.v1.heartbeat import ClusterCapacityChanged, ClusterHealth, ClusterHealthChanged
from flotilla_contracts.v1.registration import ClusterInfo, ClusterState
from flotilla_contracts.v1.registration_events import (
    ClusterApproved,
    ClusterDeregistered,
    ClusterJoinRequested,
    ClusterLabelsChanged,
    ClusterRejected,
    ClusterRejoined,
    ClusterTaintsChanged,
)
from flotilla_contracts.v1.scheduler import Weighting
from flotilla_contracts.v1.scheduler_events import (
    FLEET_SCOPE,
    AppliedStatusReported,
    DisruptedGroup,
    FleetDisrupted,
    FleetRecovered,
    PlacementReason,
)
from flotilla_runtime.consumers import EventHandler, EventMeta
from flotilla_runtime.disruption import Change, Disruption, describe
from flotilla_runtime.logs import get_logger
from flotilla_runtime.store import Tx
from flotilla_runtime.trust import RefusalLedger
from flotilla_scheduler import reports
from flotilla_scheduler import store as tables
from flotilla_scheduler.engine import Engine
from flotilla_scheduler.reports import Outcome
from flotilla_scheduler.store import ClusterRecord

log = get_logger("flotilla.scheduler.readmodel")

_REASONS: dict[type[Any], PlacementReason] = {
    ClusterJoinRequested: PlacementReason.CLUSTER_JOINED,
    ClusterApproved: PlacementReason.CLUSTER_JOINED,
    ClusterRejoined: PlacementReason.CLUSTER_JOINED,
    ClusterLabelsChanged: PlacementReason.LABELS_CHANGED,
    ClusterTaintsChanged: PlacementReason.TAINTS_CHANGED,
    ClusterRejected: PlacementReason.CLUSTER_DEREGISTERED,
    ClusterDeregistered: PlacementReason.CLUSTER_DEREGISTERED,
}


def _stamped(taints: list[Taint], previous: list[Taint], at: Any) -> list[Taint]:
    """Taints with a time: their own, else when we first saw them (kept across later events)."""
    seen = {(t.key, t.value, t.effect): t.added_at for t in previous}
    out = []
    for taint in taints:
        if taint.added_at is None:
            first = seen.get((taint.key, taint.value, taint.effect)) or at
            taint = Taint(key=taint.key, value=taint.value, effect=taint.effect, added_at=first)
        out.append(taint)
    return out


class ReadModel:
    """Event handlers for the scheduler's two consumers: cluster facts (FLEET_EVENTS) and the cluster agents'
    applied reports (FLEET_REPORTS, what members publish); a durable consumer reads one stream."""

    def __init__(self, engine: Engine, ledger: RefusalLedger | None = None) -> None:
        self.engine = engine
        # Counts and reports the applied reports a cluster may not make (the app's counts in /metrics).
        self.ledger = ledger or RefusalLedger(Service.SCHEDULER.value)

    def filters(self) -> list[str]:
        """The cluster facts the services emit (FLEET_EVENTS)."""
        return [subjects.entity_events(subjects.Entity.CLUSTER), subjects.entity_events(subjects.Entity.CLUSTER_HEALTH)]

    def report_filters(self) -> list[str]:
        """The applied reports cluster agents publish (FLEET_REPORTS)."""
        return [subjects.entity_events(subjects.Entity.APPLIED)]

    def handlers(self) -> dict[type[Any], EventHandler]:
        found: dict[type[Any], EventHandler] = dict.fromkeys(_REASONS, self.on_cluster)
        found[ClusterHealthChanged] = self.on_health
        found[ClusterCapacityChanged] = self.on_capacity
        found[AppliedStatusReported] = self.on_applied
        return found

    async def _guarded(self, tx: Tx, body: Any) -> None:
        await self.engine.begin(tx)  # memory left by a transaction that did not commit is rebuilt first
        await body()

    async def on_cluster(self, event: Any, tx: Tx, meta: EventMeta) -> None:
        cluster: ClusterInfo = event.cluster

        async def body() -> None:
            previous = self.engine.records.get(cluster.cluster_id, ClusterRecord())
            record = ClusterRecord(
                approved=cluster.state is ClusterState.APPROVED,
                labels=dict(cluster.labels),
                taints=_stamped(list(cluster.taints), previous.taints, event.occurred_at),
                health=previous.health,
                health_since=previous.health_since,
                lost=previous.lost,
                allocatable=previous.allocatable,
            )
            if record == previous and cluster.cluster_id in self.engine.records:
                return
            await self._changed(tx, cluster.cluster_id, previous, record, _REASONS[type(event)])

        await self._guarded(tx, body)

    async def on_health(self, event: ClusterHealthChanged, tx: Tx, meta: EventMeta) -> None:
        async def body() -> None:
            previous = self.engine.records.get(event.cluster_id, ClusterRecord())
            nodes = event.nodes
            lost = nodes.lost > 0 and nodes.ready + nodes.not_ready + nodes.unreachable == 0
            record = msgspec.structs.replace(previous, health=event.to, health_since=event.occurred_at, lost=lost)
            # The disruption rule judges first, so the change that tips the fleet over moves nothing either.
            change = await self.engine.judge_disruption(tx, event.cluster_id, record, event.occurred_at)
            await self._changed(tx, event.cluster_id, previous, record, PlacementReason.HEALTH_CHANGED)
            if change:
                await disruption_changed(self.engine, tx, change, event.occurred_at)

        await self._guarded(tx, body)

    async def on_capacity(self, event: ClusterCapacityChanged, tx: Tx, meta: EventMeta) -> None:
        async def body() -> None:
            previous = self.engine.records.get(event.cluster_id, ClusterRecord())
            record = msgspec.structs.replace(previous, allocatable=event.allocatable)
            await self._changed(tx, event.cluster_id, previous, record, PlacementReason.CAPACITY_CHANGED)

        await self._guarded(tx, body)

    async def on_applied(self, event: AppliedStatusReported, tx: Tx, meta: EventMeta) -> None:
        """A cluster agent's report: recorded only when it is the sender's own (reports.judge), else refused."""
        sender = reports.sender_of(meta.subject)
        verdict = reports.judge(meta.subject, event, await tables.sent_to(tx, event.subscription, sender))
        if verdict.outcome is Outcome.RECORD:
            await tables.set_applied(
                tx, event.subscription, sender, event.generation, event.state, event.message, event.occurred_at
            )
        elif verdict.reason is not None:
            refused = self.ledger.refuse(sender, verdict.reason, subject=meta.subject, detail=verdict.detail)
            if refused is not None:
                await tx.emit(self.ledger.subject_for(refused), refused)

    async def _changed(
        self, tx: Tx, cluster_id: str, previous: ClusterRecord, record: ClusterRecord, reason: PlacementReason
    ) -> None:
        engine = self.engine
        before = engine.fleet.get(cluster_id)
        await engine.put_cluster(tx, cluster_id, record)
        after = engine.fleet.get(cluster_id)
        if before == after:
            return
        quiet = before and after and before.effective_taints() == after.effective_taints()
        if reason is PlacementReason.HEALTH_CHANGED and quiet:  # Ready <-> Degraded: nothing to do
            return
        label_sets = [v.labels for v in (before, after) if v is not None]
        if before and after and before.labels == after.labels and reason is not PlacementReason.CAPACITY_CHANGED:
            # Same labels, only more taints (e.g. it went Unreachable): only what runs there can move.
            more_taints = set(before.effective_taints()) <= set(after.effective_taints())
            label_sets = [] if more_taints else label_sets
        for name in engine.affected_by(cluster_id, label_sets):
            sub = engine.subs[name]
            if reason is PlacementReason.CAPACITY_CHANGED and sub.compiled.policy.weighting is not Weighting.CAPACITY:
                continue
            # replace() re-renders the trigger cluster too: global overrides follow its labels.
            await engine.replace(tx, name, reason, trigger=cluster_id)


def _group(found: Disruption) -> DisruptedGroup:
    return DisruptedGroup(
        label=found.label, value=found.value, unreachable=found.unreachable, total=found.total, since=found.since
    )


async def disruption_changed(engine: Engine, tx: Tx, change: Change, at: datetime) -> None:
    """Emit FleetDisrupted / FleetRecovered; on recovery re-place what runs on clusters no longer held."""
    now = [_group(d) for d in engine.disruption.disrupted.values()]
    if change.began:
        message = f"{describe(change.began)} within {engine.disruption.policy.window_s:g} s: re-placement held"
        log.warning("fleet disruption: %s", message)
        event = FleetDisrupted(began=[_group(d) for d in change.began], disrupted=now, message=message, occurred_at=at)
        await tx.emit(catalogue.subject_for(FleetDisrupted, scope=FLEET_SCOPE), event)
    if not change.ended:
        return
    message = f"recovered: {describe(change.ended)} when it began; re-placement resumes"
    log.warning("fleet disruption ended: %s", message)
    recovered = FleetRecovered(ended=[_group(d) for d in change.ended], disrupted=now, message=message, occurred_at=at)
    await tx.emit(catalogue.subject_for(FleetRecovered, scope=FLEET_SCOPE), recovered)
    names: set[str] = set()
    for cluster_id, record in engine.records.items():
        view = engine.fleet.get(cluster_id)
        if record.health is ClusterHealth.UNREACHABLE and view is not None and not view.held:
            names.update(engine.placed_on.get(cluster_id, ()))
    for name in sorted(names):
        await engine.replace(tx, name, PlacementReason.FLEET_RECOVERED)
