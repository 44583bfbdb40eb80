"""Scheduler test harness: commands through TestNatsBroker, events fed to the read model, an injected clock.

The harness lives here (not in a helper module) because this folder is not on pytest's pythonpath.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest
from faststream.nats import TestNatsBroker

from flotilla_contracts import catalogue
from flotilla_contracts.envelope import Message, Reply
from flotilla_contracts.subjects import Service, command
from flotilla_contracts.v1.common import Resources, Taint
from flotilla_contracts.v1.heartbeat import ClusterCapacityChanged, ClusterHealth, ClusterHealthChanged, NodeCounts
from flotilla_contracts.v1.registration import ApprovalSource, ClusterIdentity, ClusterInfo, ClusterState
from flotilla_contracts.v1.registration_events import (
    ClusterApproved,
    ClusterDeregistered,
    ClusterLabelsChanged,
    ClusterTaintsChanged,
)
from flotilla_contracts.v1.scheduler_events import AppliedStatusReported
from flotilla_runtime.bus import make_broker
from flotilla_runtime.commands import CommandRouter
from flotilla_runtime.consumers import EventMeta
from flotilla_runtime.metrics import Registry
from flotilla_runtime.migrations import load_migrations
from flotilla_runtime.store import Store
from flotilla_runtime.trust import RefusalLedger
from flotilla_scheduler.app import Settings
from flotilla_scheduler.handlers import Scheduler
from flotilla_scheduler.readmodel import ReadModel

R = TypeVar("R", bound=Message)
# How long a command may take to answer: TestNatsBroker's default (0.5 s) is shorter than a batch of 500 specs
# takes on a loaded machine (test_a_batch_over_the_limit_... timed out at load 11).
REPLY_S = 30.0


@dataclass
class Clock:
    now: datetime = field(default_factory=lambda: datetime(2026, 11, 22, 12, 0, tzinfo=UTC))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def cluster_info(
    cid: str, labels: dict[str, str], taints: list[Taint] | None = None, state: ClusterState = ClusterState.APPROVED
) -> ClusterInfo:
    at = datetime(2026, 11, 22, 11, 0, tzinfo=UTC)
    return ClusterInfo(
        cluster_id=cid,
        identity=ClusterIdentity(uid=f"uid-{cid}", name=cid.lower().replace("_", "-"), kubernetes_version="v1.30.4"),
        state=state,
        labels=labels,
        taints=taints or [],
        joined_at=at,
        updated_at=at,
    )


@dataclass
class Harness:
    broker: Any
    store: Store
    clock: Clock
    scheduler: Scheduler
    read_model: ReadModel
    metrics: Registry
    seq: int = 0

    async def raw(self, verb: str, body: Message | dict[str, Any]) -> dict[str, Any]:
        reply = await self.broker.request(msgspec.json.encode(body), command(Service.SCHEDULER, verb), timeout=REPLY_S)
        decoded: dict[str, Any] = msgspec.json.decode(reply.body)
        return decoded

    async def ok(self, verb: str, body: Message | dict[str, Any], reply_type: type[R]) -> R:
        reply = msgspec.json.decode(
            (
                await self.broker.request(msgspec.json.encode(body), command(Service.SCHEDULER, verb), timeout=REPLY_S)
            ).body,
            type=Reply[reply_type],  # type: ignore[valid-type]
        )
        assert reply.ok, reply.error
        assert reply.data is not None
        return reply.data  # type: ignore[no-any-return]

    async def error(self, verb: str, body: Message | dict[str, Any]) -> dict[str, Any]:
        reply = await self.raw(verb, body)
        assert reply["ok"] is False, reply
        error: dict[str, Any] = reply["error"]
        return error

    async def feed(self, event: Any, subject: str = "") -> None:
        """Deliver one event to the read model as the consumer would: in a transaction, once.

        An applied report arrives on its own cluster's subject unless `subject` says otherwise (a forgery)."""
        self.seq += 1
        handler = self.read_model.handlers()[type(event)]
        if not subject and isinstance(event, AppliedStatusReported):
            subject = catalogue.subject_for(
                AppliedStatusReported, cluster_id=event.cluster_id, subscription=event.subscription
            )
        async with self.store.transaction() as tx:
            await handler(event, tx, EventMeta(subject or "test", f"m{self.seq}", self.seq, {}))

    async def refused(self) -> dict[str, float]:
        """`flotilla_member_refused_total` by reason, read from the /metrics text."""
        found = {}
        for line in (await self.metrics.render()).splitlines():
            if line.startswith("flotilla_member_refused_total{"):
                series, value = line.rsplit(" ", 1)
                found[series.split('reason="', 1)[1].rstrip('"}')] = float(value)
        return found

    async def join(self, cid: str, **labels: str) -> None:
        info = cluster_info(cid, {"env": "prod", **labels})
        await self.feed(ClusterApproved(cluster=info, approved_by=ApprovalSource.ADMIN, occurred_at=self.clock()))

    async def relabel(self, cid: str, **labels: str) -> None:
        await self.feed(ClusterLabelsChanged(cluster=cluster_info(cid, labels), occurred_at=self.clock()))

    async def taint(self, cid: str, labels: dict[str, str], taints: list[Taint]) -> None:
        await self.feed(ClusterTaintsChanged(cluster=cluster_info(cid, labels, taints), occurred_at=self.clock()))

    async def deregister(self, cid: str) -> None:
        info = cluster_info(cid, {}, state=ClusterState.DEREGISTERED)
        await self.feed(ClusterDeregistered(cluster=info, occurred_at=self.clock()))

    async def health(self, cid: str, to: ClusterHealth, lost: int = 0) -> None:
        nodes = (
            NodeCounts(lost=lost)
            if lost
            else NodeCounts(unreachable=1)
            if to is ClusterHealth.UNREACHABLE
            else NodeCounts(ready=1)
        )
        await self.feed(
            ClusterHealthChanged(cluster_id=cid, to=to, reason="test", nodes=nodes, occurred_at=self.clock())
        )

    async def capacity(self, cid: str, cpu_millis: int) -> None:
        res = Resources(cpu_millis=cpu_millis)
        await self.feed(ClusterCapacityChanged(cluster_id=cid, capacity=res, allocatable=res, occurred_at=self.clock()))

    async def outbox(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(subject, schema, payload) of every event and agent command committed, in order."""
        rows = await self.store.fetchall("SELECT subject, headers, payload FROM outbox ORDER BY seq")
        return [
            (
                row["subject"],
                msgspec.json.decode(row["headers"])["Flotilla-Schema"],
                msgspec.json.decode(row["payload"]),
            )
            for row in rows
        ]

    async def drain(self) -> list[tuple[str, str, dict[str, Any]]]:
        """The outbox, emptied (as if the relay published it)."""
        found = await self.outbox()
        async with self.store.transaction() as tx:
            await tx.execute("DELETE FROM outbox")
        return found

    async def restart(self) -> None:
        """A new scheduler over the same file, as after a process restart."""
        self.scheduler.engine.clock = self.clock
        fresh = Scheduler.create(self.store, self.clock)
        await fresh.load()
        self.scheduler.engine.__dict__.update(fresh.engine.__dict__)


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    store = await Store.open(tmp_path / "scheduler.db", load_migrations("flotilla_scheduler", "scheduler"))
    clock = Clock()
    try:
        scheduler = Scheduler.create(store, clock)
        await scheduler.load()
        router = CommandRouter(Service.SCHEDULER, max_message_bytes=Settings().max_message_bytes)
        scheduler.register(router)
        broker = make_broker("nats://127.0.0.1:1", "test")
        router.install(broker)
        metrics = Registry()
        ledger = RefusalLedger(Service.SCHEDULER.value, metrics, clock=lambda: clock().timestamp())
        async with TestNatsBroker(broker) as test_broker:
            yield Harness(test_broker, store, clock, scheduler, ReadModel(scheduler.engine, ledger), metrics)
    finally:
        await store.close()
