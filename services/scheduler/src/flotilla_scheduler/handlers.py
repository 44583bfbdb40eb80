"""The scheduler's command handlers: decode (the router did), run one use case as a `Store.run` work, reply."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import TypeVar

from flotilla_contracts.errors import ErrorCode
from flotilla_contracts.v1.scheduler import (
    MAX_APPLY_BATCH,
    ApplyOutcome,
    ApplyResult,
    ApplySubscriptionReply,
    ApplySubscriptionRequest,
    ApplySubscriptionsReply,
    ApplySubscriptionsRequest,
    DeleteSubscriptionReply,
    DeleteSubscriptionRequest,
    GetRenderedReply,
    GetRenderedRequest,
    GetSubscriptionReply,
    GetSubscriptionRequest,
    ListSubscriptionsReply,
    ListSubscriptionsRequest,
    SubscriptionSpec,
)
from flotilla_runtime.commands import CommandContext, CommandRouter
from flotilla_runtime.errors import RequestError
from flotilla_runtime.store import Store, SyncTx
from flotilla_scheduler import store as tables
from flotilla_scheduler import subscriptions
from flotilla_scheduler.engine import Engine, Stale

T = TypeVar("T")
# Specs of a batch per `Store.run` work: the works of one batch are queued together (one group commit), and a
# work short enough that the event loop is not kept waiting on the database thread for long.
SPECS_PER_WORK = 100


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Scheduler:
    """What the handlers share: the store and the engine (which holds the clock)."""

    store: Store
    engine: Engine

    @classmethod
    def create(cls, store: Store, clock: Callable[[], datetime] = utc_now) -> Scheduler:
        return cls(store, Engine(clock))

    async def load(self) -> None:
        async with self.store.transaction() as tx:
            await self.engine.load(tx)

    def register(self, router: CommandRouter) -> None:
        router.add("subscriptions.apply", ApplySubscriptionRequest, ApplySubscriptionReply, self.apply)
        router.add("subscriptions.batch.apply", ApplySubscriptionsRequest, ApplySubscriptionsReply, self.apply_batch)
        router.add("subscriptions.list", ListSubscriptionsRequest, ListSubscriptionsReply, self.list)
        router.add("subscriptions.get", GetSubscriptionRequest, GetSubscriptionReply, self.get)
        router.add("subscriptions.rendered", GetRenderedRequest, GetRenderedReply, self.rendered)
        router.add("subscriptions.delete", DeleteSubscriptionRequest, DeleteSubscriptionReply, self.delete)

    async def run(self, work: Callable[[SyncTx], T]) -> T:
        """One work in the database thread, group-committed with the others queued; run again on fresh memory
        when an earlier transaction did not commit (the work raised `Stale` before changing anything)."""
        for _ in range(2):
            try:
                return await self.store.run(work)
            except Stale:
                await self.engine.reload(self.store)
        return await self.store.run(work)

    async def apply(self, request: ApplySubscriptionRequest, ctx: CommandContext) -> ApplySubscriptionReply:
        spec = subscriptions.checked(request.spec)
        reply = await self.run(lambda tx: subscriptions.apply(self.engine, tx, spec))
        if reply.changed:
            ctx.log.info("subscription %s applied", reply.name, extra={"generation": reply.generation})
        return reply

    async def apply_batch(self, request: ApplySubscriptionsRequest, ctx: CommandContext) -> ApplySubscriptionsReply:
        """Each spec as `apply` would, one result each in order; a refused spec does not fail the others."""
        count = len(request.specs)
        if count > MAX_APPLY_BATCH:
            raise RequestError(
                ErrorCode.INVALID_FIELD,
                f"specs: a batch takes at most {MAX_APPLY_BATCH} subscriptions and this one has {count}; nothing "
                f"was applied: send them in requests of {MAX_APPLY_BATCH} or fewer",
                field="specs",
                limit=MAX_APPLY_BATCH,
            )
        items: list[SubscriptionSpec | ApplyResult] = []
        for spec in request.specs:
            try:
                items.append(subscriptions.checked(spec))
            except RequestError as exc:
                items.append(subscriptions.refused(spec.name, exc))
        chunks = [items[i : i + SPECS_PER_WORK] for i in range(0, count, SPECS_PER_WORK)]
        works = [partial(subscriptions.apply_each, self.engine, chunk=chunk) for chunk in chunks]
        done = await asyncio.gather(*(self.run(work) for work in works))
        results = [r for chunk_results in done for r in chunk_results]
        refused = [r.name for r in results if r.outcome is ApplyOutcome.ERROR]
        applied = sum(r.outcome is ApplyOutcome.APPLIED for r in results)
        ctx.log.info(
            "batch of %d subscriptions: %d applied, %d unchanged, %d refused",
            count, applied, count - applied - len(refused), len(refused),
            extra={"refused": refused[:20]},
        )  # fmt: skip
        return ApplySubscriptionsReply(results=results)

    async def delete(self, request: DeleteSubscriptionRequest, ctx: CommandContext) -> DeleteSubscriptionReply:
        reply = await self.run(lambda tx: subscriptions.delete(self.engine, tx, request.name))
        ctx.log.info("subscription %s deleted", request.name, extra={"clusters": reply.clusters})
        return reply

    async def list(self, request: ListSubscriptionsRequest, ctx: CommandContext) -> ListSubscriptionsReply:
        return await self.run(lambda tx: subscriptions.page(self.engine, tx, request.cursor, request.limit))

    async def get(self, request: GetSubscriptionRequest, ctx: CommandContext) -> GetSubscriptionReply:
        def query(tx: SyncTx) -> GetSubscriptionReply:
            self.engine.check_in(tx)
            sub = subscriptions.found(self.engine, request.name)
            return GetSubscriptionReply(subscription=subscriptions.info(sub, tables.applied_of(tx, request.name)))

        return await self.run(query)

    async def rendered(self, request: GetRenderedRequest, ctx: CommandContext) -> GetRenderedReply:
        def query(tx: SyncTx) -> GetRenderedReply:
            self.engine.check_in(tx)
            return subscriptions.rendered(self.engine, request.name, request.cluster_id)

        return await self.run(query)

    async def expire_due(self) -> int:
        """Re-place what a running-out toleration moves (called by the timer task)."""
        now = self.engine.clock()
        if not self.engine.timers or self.engine.timers[0][0] > now:
            return 0
        return await self.run(lambda tx: subscriptions.expire(self.engine, tx, now))
