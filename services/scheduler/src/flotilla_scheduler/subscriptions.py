"""Subscription commands: apply (one or a batch), delete and the queries list, get and rendered, each a
`Store.run` work.

A work runs in the database thread and is group-committed with the others queued with it (one COMMIT for
many applies); the engine checks its memory is the tables' first (`Engine.begin_in`, `check_in`).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from flotilla_contracts import catalogue
from flotilla_contracts.errors import ErrorCode
from flotilla_contracts.v1.scheduler import (
    ApplyOutcome,
    ApplyResult,
    ApplySubscriptionReply,
    ClusterApplied,
    DeleteSubscriptionReply,
    GetRenderedReply,
    ListSubscriptionsReply,
    SubscriptionInfo,
    SubscriptionSpec,
    SubscriptionSummary,
)
from flotilla_contracts.v1.scheduler_events import (
    PlacementDecided,
    PlacementReason,
    SubscriptionApplied,
    SubscriptionDeleted,
)
from flotilla_runtime.errors import RequestError
from flotilla_runtime.store import SyncTx
from flotilla_scheduler import store as tables
from flotilla_scheduler.engine import Engine, Subscription, cluster_placements
from flotilla_scheduler.overrides import PatchError, Rendered
from flotilla_scheduler.placement import Decision
from flotilla_scheduler.store import SubscriptionRow
from flotilla_scheduler.validation import SpecError, validate


def refuse(exc: SpecError) -> RequestError:
    return RequestError(exc.code, f"{exc.field}: {exc.message}", field=exc.field)


def checked(spec: SubscriptionSpec) -> SubscriptionSpec:
    """What a schema cannot say, checked before the work is queued (pure: no state needed)."""
    try:
        validate(spec)
    except SpecError as exc:
        raise refuse(exc) from None
    return spec


@dataclass(frozen=True)
class Prepared:
    """A changed spec ready to store: its subscription (not yet in memory), placed and rendered once."""

    sub: Subscription
    created: bool
    decided: tuple[Decision, dict[str, Rendered]]


def prepare(engine: Engine, spec: SubscriptionSpec) -> Prepared | ApplySubscriptionReply:
    """The reply for an identical spec, or the changed one placed and rendered (the renderings that prove the
    overrides apply are the ones sent). Changes nothing, in memory or in the tables: a spec refused here
    (`RequestError`: an override that cannot render) leaves nothing to roll back."""
    previous = engine.subs.get(spec.name)
    if previous is not None and previous.row.spec == spec:
        return ApplySubscriptionReply(name=spec.name, generation=previous.row.generation, created=False, changed=False)
    now = engine.clock()
    row = SubscriptionRow(
        spec=spec,
        generation=previous.row.generation + 1 if previous else 1,
        created_at=previous.row.created_at if previous else now,
        updated_at=now,
        decision=previous.row.decision if previous else 0,
        placed_policy=previous.row.placed_policy if previous else None,
        unplaced=previous.row.unplaced if previous else 0,
        message="",
    )
    sub = Subscription.of(row)
    if previous is not None:
        sub.placements, sub.digests = dict(previous.placements), dict(previous.digests)
    try:
        decided = engine.dry_run(sub, now)
    except PatchError as exc:
        raise RequestError(ErrorCode.INVALID_FIELD, f"overrides: {exc}", field="overrides") from None
    return Prepared(sub, previous is None, decided)


def commit(engine: Engine, tx: SyncTx, prepared: Prepared) -> ApplySubscriptionReply:
    """Store, announce and place a prepared spec, in a work that `begin_in` stamped (memory changes with the
    tables from here on; `replace_in` stores the row: announce)."""
    sub, row = prepared.sub, prepared.sub.row
    name = row.spec.name
    tx.emit(
        catalogue.subject_for(SubscriptionApplied, subscription=name),
        SubscriptionApplied(
            spec=row.spec, generation=row.generation, created=prepared.created, occurred_at=row.updated_at
        ),
    )
    engine.subs[name] = sub
    engine.replace_in(
        tx, name, PlacementReason.SUBSCRIPTION_APPLIED, rerender=True, announce=True, dry_run=prepared.decided
    )
    return ApplySubscriptionReply(name=name, generation=row.generation, created=prepared.created, changed=True)


def apply(engine: Engine, tx: SyncTx, spec: SubscriptionSpec) -> ApplySubscriptionReply:
    """Store, announce and place a `checked` spec; an identical spec changes nothing (and writes nothing)."""
    engine.check_in(tx)
    prepared = prepare(engine, spec)
    if isinstance(prepared, ApplySubscriptionReply):
        return prepared
    engine.begin_in(tx)
    return commit(engine, tx, prepared)


def result(reply: ApplySubscriptionReply) -> ApplyResult:
    outcome = ApplyOutcome.APPLIED if reply.changed else ApplyOutcome.UNCHANGED
    return ApplyResult(name=reply.name, outcome=outcome, generation=reply.generation, created=reply.created)


def refused(name: str, exc: RequestError) -> ApplyResult:
    return ApplyResult(name=name, outcome=ApplyOutcome.ERROR, error=exc.to_body())


def apply_each(engine: Engine, tx: SyncTx, *, chunk: Sequence[SubscriptionSpec | ApplyResult]) -> list[ApplyResult]:
    """`apply` for each `checked` spec in order (an ApplyResult stands for one refused before it was queued). The
    work is stamped once (`begin_in`, before any spec), and a spec is refused only while it is prepared, before it
    writes or changes anything: it is answered with its error and the others apply, with no SAVEPOINT a spec.
    `Stale` ends the whole work, which runs again on fresh memory (applies are idempotent)."""
    engine.begin_in(tx)
    results = []
    for item in chunk:
        if isinstance(item, ApplyResult):
            results.append(item)
            continue
        try:
            prepared = prepare(engine, item)
        except RequestError as exc:
            results.append(refused(item.name, exc))
            continue
        reply = prepared if isinstance(prepared, ApplySubscriptionReply) else commit(engine, tx, prepared)
        results.append(result(reply))
    return results


def delete(engine: Engine, tx: SyncTx, name: str) -> DeleteSubscriptionReply:
    """Remove the workload from every cluster, forget the subscription, announce both."""
    engine.check_in(tx)
    sub = engine.subs.get(name)
    if sub is None:
        raise RequestError(ErrorCode.NOT_FOUND, f"no subscription {name}", field="name")
    engine.begin_in(tx)
    now = engine.clock()
    clusters = sorted(sub.placements)
    for cluster_id in clusters:
        engine.send(tx, sub, cluster_id, sub.row.generation, [], placed=False)
    tables.delete_subscription(tx, name)
    decided = PlacementDecided(
        subscription=name,
        generation=sub.row.generation,
        decision=sub.row.decision + 1,
        reason=PlacementReason.SUBSCRIPTION_DELETED,
        removed_clusters=clusters,
        moved_replicas=sum(p.replicas or 0 for p in sub.placements.values()),
        occurred_at=now,
    )
    tx.emit(catalogue.subject_for(PlacementDecided, subscription=name), decided)
    tx.emit(
        catalogue.subject_for(SubscriptionDeleted, subscription=name),
        SubscriptionDeleted(name=name, occurred_at=now),
    )
    for cluster_id in clusters:
        engine.mark(name, cluster_id, False)
    del engine.subs[name]
    return DeleteSubscriptionReply(name=name, clusters=len(clusters))


def page(engine: Engine, tx: SyncTx, cursor: str, limit: int) -> ListSubscriptionsReply:
    """The subscriptions named after `cursor` (the last name of the page before; "" for the first), `limit` at
    most, by name: any name is a cursor, so one deleted in between does not break the listing."""
    engine.check_in(tx)
    names = sorted(engine.subs)
    start = bisect.bisect_right(names, cursor) if cursor else 0
    chosen = names[start : start + limit]
    counts = tables.applied_counts(tx, cursor, chosen[-1]) if chosen else {}
    summaries = []
    for name in chosen:
        sub = engine.subs[name]
        applied, failed = counts.get(name, (0, 0))
        summaries.append(
            SubscriptionSummary(
                name=name,
                generation=sub.row.generation,
                strategy=sub.row.spec.policy.strategy,
                clusters=len(sub.placements),
                applied=applied,
                failed=failed,
                updated_at=sub.row.updated_at,
            )
        )
    more = start + limit < len(names)
    return ListSubscriptionsReply(
        subscriptions=summaries, total=len(names), next_cursor=chosen[-1] if more and chosen else ""
    )


def found(engine: Engine, name: str) -> Subscription:
    sub = engine.subs.get(name)
    if sub is None:
        raise RequestError(ErrorCode.NOT_FOUND, f"no subscription {name}", field="name")
    return sub


def info(sub: Subscription, applied: list[ClusterApplied]) -> SubscriptionInfo:
    row = sub.row
    return SubscriptionInfo(
        spec=row.spec,
        generation=row.generation,
        created_at=row.created_at,
        updated_at=row.updated_at,
        placements=cluster_placements(sub.placements),
        applied=applied,
        unplaced_replicas=row.unplaced,
        message=row.message,
    )


def rendered(engine: Engine, name: str, cluster_id: str) -> GetRenderedReply:
    sub = found(engine, name)
    placement = sub.placements.get(cluster_id)
    if placement is None and cluster_id not in engine.records:
        raise RequestError(ErrorCode.NOT_FOUND, f"no cluster {cluster_id} is known", field="cluster_id")
    replicas = placement.replicas if placement else None
    try:
        out = engine.render_for(sub, cluster_id, replicas)
    except PatchError as exc:
        raise RequestError(ErrorCode.PRECONDITION_FAILED, str(exc), field="overrides") from None
    return GetRenderedReply(
        name=name,
        cluster_id=cluster_id,
        generation=sub.row.generation,
        placed=placement is not None,
        replicas=replicas,
        manifests=out.manifests,
        overrides_applied=out.overrides_applied,
    )


def expire(engine: Engine, tx: SyncTx, now: datetime) -> int:
    """Re-place the subscriptions whose toleration ran out; returns how many moved."""
    engine.begin_in(tx)
    moved = 0
    for name in engine.due(now):
        decision = engine.replace_in(tx, name, PlacementReason.TOLERATION_EXPIRED)
        moved += decision.changed
    return moved
