"""The scheduler's command handlers: decode (the router did), run one use case, reply."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from flotilla_contracts.v1.scheduler import (
    ApplySubscriptionReply,
    ApplySubscriptionRequest,
    DeleteSubscriptionReply,
    DeleteSubscriptionRequest,
    GetRenderedReply,
    GetRenderedRequest,
    GetSubscriptionReply,
    GetSubscriptionRequest,
    ListSubscriptionsReply,
    ListSubscriptionsRequest,
)
from flotilla_runtime.commands import CommandContext, CommandRouter
from flotilla_runtime.store import Store
from flotilla_scheduler import store as tables
from flotilla_scheduler import subscriptions
from flotilla_scheduler.engine import Engine


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
        router.add("subscriptions.list", ListSubscriptionsRequest, ListSubscriptionsReply, self.list)
        router.add("subscriptions.get", GetSubscriptionRequest, GetSubscriptionReply, self.get)
        router.add("subscriptions.rendered", GetRenderedRequest, GetRenderedReply, self.rendered)
        router.add("subscriptions.delete", DeleteSubscriptionRequest, DeleteSubscriptionReply, self.delete)

    async def apply(self, request: ApplySubscriptionRequest, ctx: CommandContext) -> ApplySubscriptionReply:
        async with self.store.transaction() as tx:
            reply = await subscriptions.apply(self.engine, tx, request.spec)
        if reply.changed:
            ctx.log.info("subscription %s applied", reply.name, extra={"generation": reply.generation})
        return reply

    async def delete(self, request: DeleteSubscriptionRequest, ctx: CommandContext) -> DeleteSubscriptionReply:
        async with self.store.transaction() as tx:
            reply = await subscriptions.delete(self.engine, tx, request.name)
        ctx.log.info("subscription %s deleted", request.name, extra={"clusters": reply.clusters})
        return reply

    async def list(self, request: ListSubscriptionsRequest, ctx: CommandContext) -> ListSubscriptionsReply:
        await self.engine.refresh(self.store)
        counts = await tables.applied_counts(self.store)
        return ListSubscriptionsReply(subscriptions=subscriptions.summaries(self.engine, counts))

    async def get(self, request: GetSubscriptionRequest, ctx: CommandContext) -> GetSubscriptionReply:
        await self.engine.refresh(self.store)
        sub = subscriptions.found(self.engine, request.name)
        applied = await tables.applied_of(self.store, request.name)
        return GetSubscriptionReply(subscription=subscriptions.info(sub, applied))

    async def rendered(self, request: GetRenderedRequest, ctx: CommandContext) -> GetRenderedReply:
        await self.engine.refresh(self.store)
        return subscriptions.rendered(self.engine, request.name, request.cluster_id)

    async def expire_due(self) -> int:
        """Re-place what a running-out toleration moves (called by the timer task)."""
        now = self.engine.clock()
        if not self.engine.timers or self.engine.timers[0][0] > now:
            return 0
        async with self.store.transaction() as tx:
            return await subscriptions.expire(self.engine, tx, now)
