"""The scheduler's working state and its one use case, re-placing a subscription, inside a transaction.

Every change (a command, an event, a toleration running out) runs inside one store transaction: the
decision, the rows, the `PlacementDecided` event and the `ApplyManifests` agent commands commit together.
Commands and the timer run as `Store.run` works in the database thread (synchronous, group-committed with
whatever else is queued: one thread hop and one COMMIT for many applies); the read model's events run in
an async transaction and replay the same writes there (`replace` records them, then flushes).
The in-memory state (fleet index, subscriptions, placements, timers) mirrors the tables. It is changed
inside the transaction, so a transaction that does not commit (an error half-way, or the COMMIT itself
failing on a full disk, which the code inside the transaction never sees) must not leave it behind. Every
operation therefore begins with `begin` (`begin_in` in a work), which writes a fresh stamp both to the
tables and to memory: if the transaction commits they agree; if it does not, the tables keep the previous
stamp, and the next operation or query sees the difference and rebuilds memory from the tables first (a
work cannot await the rebuild: it raises `Stale`, and its caller reloads and runs it again).
"""

from __future__ import annotations

import hashlib
import heapq
import os
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import msgspec

from flotilla_contracts import catalogue
from flotilla_contracts.v1.heartbeat import ClusterHealth
from flotilla_contracts.v1.scheduler import AppliedState, ClusterPlacement
from flotilla_contracts.v1.scheduler_events import ApplyManifests, PlacementDecided, PlacementReason
from flotilla_runtime.disruption import Change, Policy, Watch
from flotilla_runtime.store import Store, SyncTx, Tx
from flotilla_scheduler import store as tables
from flotilla_scheduler.fleet import ClusterView, Fleet
from flotilla_scheduler.overrides import CompiledOverride, PatchError, Rendered, compile_overrides, render
from flotilla_scheduler.placement import CompiledPolicy, Decision, Placement, compile_policy, place
from flotilla_scheduler.store import ClusterRecord, Recorder, SubscriptionRow, Writer

_enc = msgspec.json.Encoder(order="deterministic")


@dataclass
class Subscription:
    """A stored subscription with its compiled policy and overrides, and its placement."""

    row: SubscriptionRow
    compiled: CompiledPolicy
    overrides: tuple[CompiledOverride, ...]
    placements: dict[str, Placement] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, row: SubscriptionRow) -> Subscription:
        return cls(row, compile_policy(row.spec.policy), compile_overrides(row.spec.overrides))


class Stale(Exception):
    """Memory is not what the tables hold (an earlier transaction did not commit): reload, then run again."""


def view_of(
    cluster_id: str, record: ClusterRecord, *, held: bool = False, resumed_at: datetime | None = None
) -> ClusterView:
    """The cluster as placement sees it; after a fleet disruption ended (`resumed_at`), an Unreachable cluster's
    tolerations count from then, as if it had just gone Unreachable."""
    since = record.health_since
    if resumed_at is not None and (since is None or since < resumed_at):
        since = resumed_at
    return ClusterView(
        cluster_id=cluster_id,
        labels=record.labels,
        taints=tuple(record.taints),
        health=record.health,
        health_since=since,
        lost=record.lost,
        allocatable=record.allocatable,
        held=held,
    )


def digest(rendered: Rendered) -> str:
    return hashlib.sha256(_enc.encode(rendered.manifests)).hexdigest()[:32]


def cluster_placements(placements: dict[str, Placement]) -> list[ClusterPlacement]:
    return [ClusterPlacement(cluster_id=c, replicas=p.replicas, since=p.since) for c, p in sorted(placements.items())]


class Engine:
    """Subscriptions, the fleet read model and the timers of tolerations that run out."""

    def __init__(self, clock: Callable[[], datetime], disruption: Policy | None = None) -> None:
        self.clock = clock
        self.disruption = Watch(disruption or Policy())
        self.resumed_at: datetime | None = None  # when a fleet disruption last ended
        self.fleet = Fleet()
        self.records: dict[str, ClusterRecord] = {}
        self.subs: dict[str, Subscription] = {}
        self.placed_on: dict[str, set[str]] = {}
        self.timers: list[tuple[datetime, str]] = []
        self.stamp: str | None = None  # None: never loaded
        self._stamped: Tx | None = None  # the transaction that wrote `stamp`

    # --- loading -------------------------------------------------------------------------------------------

    async def load(self, tx: Tx) -> None:
        """(Re)build the memory from the tables."""
        self.fleet = Fleet()
        self.records = await tables.load_clusters(tx)
        verdict = await tables.load_disruption(tx)
        self.disruption = Watch(self.disruption.policy, verdict.disrupted)
        self.resumed_at = verdict.resumed_at
        for cluster_id, record in self.records.items():
            self._watch(cluster_id, record)
        self.disruption.settle()  # the stored verdict stands until the next health change is judged
        for cluster_id, record in self.records.items():
            if record.approved:
                self.fleet.put(self.view(cluster_id, record))
        placements = await tables.load_placements(tx)
        self.subs, self.placed_on, self.timers = {}, {}, []
        for name, row in (await tables.load_subscriptions(tx)).items():
            sub = Subscription.of(row)
            for cluster_id, (placement, digest_) in placements.get(name, {}).items():
                sub.placements[cluster_id] = placement
                sub.digests[cluster_id] = digest_
                self.mark(name, cluster_id, True)
            self.subs[name] = sub
            self.timers.append((self.clock(), name))  # re-check every subscription once after a restart
        heapq.heapify(self.timers)
        self.stamp = await tables.memory_stamp(tx)

    async def begin(self, tx: Tx) -> None:
        """Start an operation that may change memory: catch up with the tables, then stamp this transaction.

        One statement in the usual case: the stamp is swapped only if the tables still hold ours. Further
        operations in the same transaction share its stamp."""
        if tx is self._stamped:
            return
        stamp = uuid.uuid4().hex
        if self.stamp is None or not await tables.swap_stamp(tx, self.stamp, stamp):
            await self.load(tx)
            await tables.set_memory_stamp(tx, stamp)
        self.stamp, self._stamped = stamp, tx

    def begin_in(self, tx: SyncTx) -> None:
        """`begin` inside a `Store.run` work; raises `Stale` (having changed nothing) when memory must be rebuilt."""
        stamp = uuid.uuid4().hex
        if self.stamp is None:
            raise Stale
        if not tables.swap_stamp_in(tx, self.stamp, stamp):
            if tables.stamp_in(tx) != self.stamp:
                raise Stale
            tables.set_stamp_in(tx, stamp)  # a fresh file: no stamp stored yet
        self.stamp, self._stamped = stamp, None

    def check_in(self, tx: SyncTx) -> None:
        """Before a query reads memory (inside a work): `Stale` if the last operation did not commit."""
        if tables.stamp_in(tx) != self.stamp:
            raise Stale

    async def reload(self, store: Store) -> None:
        """Rebuild memory from the tables unless another caller already did (many works may find it `Stale`)."""
        async with store.transaction() as tx:
            if self.stamp is None or await tables.memory_stamp(tx) != self.stamp:
                await self.load(tx)

    def mark(self, name: str, cluster_id: str, placed: bool) -> None:
        names = self.placed_on.setdefault(cluster_id, set())
        if placed:
            names.add(name)
        else:
            names.discard(name)
        self.fleet.set_load(cluster_id, len(names))

    # --- rendering -----------------------------------------------------------------------------------------

    def labels_of(self, cluster_id: str) -> Mapping[str, str]:
        cluster = self.fleet.get(cluster_id)
        return cluster.labels if cluster else self.records.get(cluster_id, ClusterRecord()).labels

    def render_for(self, sub: Subscription, cluster_id: str, replicas: int | None) -> Rendered:
        return render(sub.row.spec.manifests, sub.overrides, cluster_id, self.labels_of(cluster_id), replicas)

    def renderer(self, sub: Subscription) -> Callable[[str, int | None], Rendered]:
        """`render_for` within one decision: clusters given the same overrides and replica count share one
        rendering (with no overrides, a Replicate subscription renders once however many clusters take it).
        The renderings are shared, never changed: they are only encoded."""
        made: dict[tuple[tuple[int, ...], int | None], Rendered] = {}

        def render_one(cluster_id: str, replicas: int | None) -> Rendered:
            labels = self.labels_of(cluster_id)
            chosen = tuple(i for i, o in enumerate(sub.overrides) if o.applies_to(cluster_id, labels))
            rendered = made.get((chosen, replicas))
            if rendered is None:
                rendered = made[chosen, replicas] = render(
                    sub.row.spec.manifests, sub.overrides, cluster_id, labels, replicas
                )
            return rendered

        return render_one

    def decide(self, sub: Subscription, now: datetime) -> Decision:
        policy_changed = sub.row.placed_policy is not None and sub.row.placed_policy != sub.row.spec.policy
        return place(sub.compiled, self.fleet, sub.placements, now, rebalance=policy_changed)

    def dry_run(self, sub: Subscription, now: datetime) -> tuple[Decision, dict[str, Rendered]]:
        """The decision a new spec gets and its renderings; raises PatchError when an override cannot render
        somewhere. `replace_in` takes both, so an apply places and renders once."""
        decision = self.decide(sub, now)
        render_one = self.renderer(sub)
        return decision, {c: render_one(c, p.replicas) for c, p in decision.placements.items()}

    # --- the use case --------------------------------------------------------------------------------------

    async def replace(self, tx: Tx, name: str, reason: PlacementReason, *, trigger: str | None = None) -> Decision:
        """`replace_in` inside an async transaction (the read model's): its writes are replayed there."""
        recorder = Recorder()
        decision = self.replace_in(recorder, name, reason, trigger=trigger)
        await recorder.flush(tx)
        return decision

    def replace_in(
        self,
        tx: Writer,
        name: str,
        reason: PlacementReason,
        *,
        trigger: str | None = None,
        rerender: bool = False,
        announce: bool = False,
        dry_run: tuple[Decision, dict[str, Rendered]] | None = None,
    ) -> Decision:
        """Re-place one subscription; send what changed to the agents; emit PlacementDecided if anything did.
        `dry_run`: the decision and renderings already made for this subscription at this time (an apply)."""
        sub = self.subs[name]
        now = self.clock()
        decision, renderings = dry_run if dry_run is not None else (self.decide(sub, now), {})
        if decision.next_check is not None:
            heapq.heappush(self.timers, (decision.next_check, name))
        send = set(decision.added) | set(decision.resized)
        if rerender:
            send |= set(decision.placements)
        elif trigger is not None and trigger in decision.placements:
            send.add(trigger)
        messages: list[str] = []
        rows = tables.DecisionRows(name)
        render_one = self.renderer(sub)
        digests: dict[int, str] = {}  # by id() of a rendering: clusters sharing one share its digest
        for cluster_id in sorted(send):
            placement = decision.placements[cluster_id]
            try:
                rendered = renderings.get(cluster_id)
                if rendered is None:
                    rendered = render_one(cluster_id, placement.replicas)
            except PatchError as exc:
                messages.append(f"{cluster_id}: {exc}")
                rows.place(placement, "")
                rows.applied(cluster_id, sub.row.generation, AppliedState.FAILED, str(exc), now)
                sub.digests[cluster_id] = ""
                continue
            new_digest = digests.get(id(rendered))
            if new_digest is None:
                new_digest = digests[id(rendered)] = digest(rendered)
            # A new generation is sent even when its rendering is the same, so applied status follows it.
            if rerender or new_digest != sub.digests.get(cluster_id) or cluster_id in decision.added:
                self.send(tx, sub, cluster_id, sub.row.generation, rendered.manifests, placed=True)
                rows.applied(cluster_id, sub.row.generation, AppliedState.PENDING, "", None)
            rows.place(placement, new_digest)
            sub.digests[cluster_id] = new_digest
        for cluster_id in decision.resized:
            if cluster_id not in send:
                rows.place(decision.placements[cluster_id], sub.digests.get(cluster_id, ""))
        for cluster_id in decision.removed:
            self.send(tx, sub, cluster_id, sub.row.generation, [], placed=False)
            rows.drop(cluster_id)
            rows.applied(cluster_id, sub.row.generation, AppliedState.PENDING, "removing", None)
            sub.digests.pop(cluster_id, None)
        rows.write(tx)
        if decision.changed or announce:
            sub.row.decision += 1
            sub.row.unplaced = decision.unplaced_replicas
            sub.row.placed_policy = sub.row.spec.policy
            sub.row.message = "; ".join(messages)
            tables.save_subscription(tx, name, sub.row)
            event = PlacementDecided(
                subscription=name,
                generation=sub.row.generation,
                decision=sub.row.decision,
                reason=reason,
                message=sub.row.message[:4096],
                trigger_cluster_id=trigger,
                placements=cluster_placements(decision.placements),
                added_clusters=decision.added,
                removed_clusters=decision.removed,
                moved_replicas=decision.moved_replicas,
                unplaced_replicas=decision.unplaced_replicas,
                occurred_at=now,
            )
            tx.emit(catalogue.subject_for(PlacementDecided, subscription=name), event)
        for cluster_id in decision.added:
            self.mark(name, cluster_id, True)
        for cluster_id in decision.removed:
            self.mark(name, cluster_id, False)
        sub.placements = decision.placements
        return decision

    def send(
        self,
        tx: Writer,
        sub: Subscription,
        cluster_id: str,
        generation: int,
        manifests: list[dict[str, object]],
        *,
        placed: bool,
    ) -> None:
        command = ApplyManifests(
            command_id=os.urandom(16).hex(),  # as unique as uuid4().hex, without building a UUID
            cluster_id=cluster_id,
            subscription=sub.row.spec.name,
            generation=generation,
            decision=max(sub.row.decision, 1),
            placed=placed,
            manifests=manifests,
            issued_at=self.clock(),
        )
        tx.emit(catalogue.subject_for(ApplyManifests, cluster_id=cluster_id), command)

    # --- fleet disruption (flotilla_runtime.disruption) -----------------------------------------------------

    def view(self, cluster_id: str, record: ClusterRecord) -> ClusterView:
        held = record.health is ClusterHealth.UNREACHABLE and self.disruption.holds(record.labels)
        return view_of(cluster_id, record, held=held, resumed_at=self.resumed_at)

    def _watch(self, cluster_id: str, record: ClusterRecord) -> None:
        if not record.approved:
            self.disruption.drop(cluster_id)
            return
        unreachable = record.health is ClusterHealth.UNREACHABLE
        since = (record.health_since or datetime.min.replace(tzinfo=UTC)) if unreachable else None
        self.disruption.put(cluster_id, record.labels, since)

    async def judge_disruption(self, tx: Tx, cluster_id: str, record: ClusterRecord, at: datetime) -> Change:
        """A health change, judged by the rule at its time before anything moves; when the verdict changes, the
        Unreachable clusters' views follow (held, or evictable with tolerations counted from `at`)."""
        self._watch(cluster_id, record)
        change = self.disruption.judge(at)
        if not change:
            return change
        if change.ended:
            self.resumed_at = at
        row = tables.DisruptionRow(disrupted=list(self.disruption.disrupted.values()), resumed_at=self.resumed_at)
        await tables.save_disruption(tx, row)
        for other, kept in self.records.items():
            if kept.approved and kept.health is ClusterHealth.UNREACHABLE and other != cluster_id:
                self.fleet.put(self.view(other, kept))
        return change

    # --- what a change affects -----------------------------------------------------------------------------

    def affected_by(self, cluster_id: str, labels: Iterable[Mapping[str, str]]) -> list[str]:
        """Subscriptions placed on the cluster, or whose selector matches any of its label sets."""
        names = set(self.placed_on.get(cluster_id, ()))
        label_sets = list(labels)
        for name, sub in self.subs.items():
            if name not in names and any(sub.compiled.selector.matches(ls) for ls in label_sets):
                names.add(name)
        return sorted(names)

    def due(self, now: datetime) -> list[str]:
        """Subscriptions whose toleration timer has run out (each once)."""
        names: set[str] = set()
        while self.timers and self.timers[0][0] <= now:
            _, name = heapq.heappop(self.timers)
            if name in self.subs:
                names.add(name)
        return sorted(names)

    async def put_cluster(self, tx: Tx, cluster_id: str, record: ClusterRecord) -> ClusterRecord | None:
        previous = self.records.get(cluster_id)
        await tables.put_cluster(tx, cluster_id, record)
        self.records[cluster_id] = record
        self._watch(cluster_id, record)
        if record.approved:
            self.fleet.put(self.view(cluster_id, record))
        else:
            self.fleet.remove(cluster_id)
        return previous
