"""A transaction that does not commit leaves nothing behind in memory: queries and the next command see the disk.

The failure is injected where the disk would refuse it: the store's transaction runs its body and then
fails at COMMIT (what SQLite does on a full disk when the WAL cannot grow), a failure the code inside the
transaction never sees. Commands and the timer run as group-committed `Store.run` works: there the group
runs its works, then SQLite rolls the whole transaction back itself and says the disk is full, so no work
of the group is durable. A second case fills a real SQLite file (`max_page_count`) so a statement fails.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest

from flotilla_contracts.v1.heartbeat import ClusterHealth
from flotilla_contracts.v1.scheduler import (
    ApplyOutcome,
    ApplySubscriptionReply,
    ApplySubscriptionsReply,
    GetSubscriptionReply,
    ListSubscriptionsReply,
)
from flotilla_runtime.store import SyncTx, Tx

DISK_FULL = "database or disk is full"


def spec(name: str = "web", payload: str = "") -> dict[str, Any]:
    manifest = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"}}
    if payload:
        manifest["data"] = {"blob": payload}
    return {"spec": {"name": name, "manifests": [manifest], "policy": {"selector": "env=prod"}}}


def fail_next_commit(store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The next transaction runs its body, then its COMMIT fails (it is rolled back); later ones work."""
    real: Callable[[], AbstractAsyncContextManager[Tx]] = store.transaction

    @asynccontextmanager
    async def failing() -> AsyncIterator[Tx]:
        monkeypatch.setattr(store, "transaction", real)
        async with real() as tx:
            yield tx
            raise sqlite3.OperationalError(DISK_FULL)

    monkeypatch.setattr(store, "transaction", failing)


def fail_next_group_commit(store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The next `Store.run` work runs, then the whole transaction is rolled back with "disk full" (nothing of
    its group commits); later ones work."""
    real: Callable[[Callable[[SyncTx], Any]], Any] = store.run

    async def failing(work: Callable[[SyncTx], Any]) -> Any:
        monkeypatch.setattr(store, "run", real)

        def then_full(tx: SyncTx) -> Any:
            work(tx)
            tx.execute("ROLLBACK")
            raise sqlite3.OperationalError(DISK_FULL)

        return await real(then_full)

    monkeypatch.setattr(store, "run", failing)


async def stored_names(h: Any) -> list[str]:
    return [str(row[0]) for row in await h.store.fetchall("SELECT name FROM subscriptions ORDER BY name")]


async def listed(h: Any) -> list[str]:
    return [s.name for s in (await h.ok("subscriptions.list", {}, ListSubscriptionsReply)).subscriptions]


async def test_an_apply_whose_commit_fails_is_not_listed_and_a_retry_stores_it(
    harness: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    await harness.join("c1")
    fail_next_group_commit(harness.store, monkeypatch)
    await harness.error("subscriptions.apply", spec())
    assert await stored_names(harness) == []
    assert await listed(harness) == []
    assert (await harness.error("subscriptions.get", {"name": "web"}))["code"] == "not_found"
    retried = await harness.ok("subscriptions.apply", spec(), ApplySubscriptionReply)
    assert (retried.created, retried.changed, retried.generation) == (True, True, 1)
    assert await stored_names(harness) == ["web"] == await listed(harness)
    agent = [s for s, _, _ in await harness.outbox() if s.startswith("fleet.v1.agent.c1.")]
    assert len(agent) == 1  # the failed attempt sent nothing; the retry sent the workload once


async def test_a_batch_whose_commit_fails_leaves_nothing_and_its_retry_applies_each_once(
    harness: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    await harness.join("c1")
    names = [f"w{i:03d}" for i in range(150)]  # two works of the batch
    batch = {"specs": [spec(name)["spec"] for name in names]}
    fail_next_group_commit(harness.store, monkeypatch)
    await harness.error("subscriptions.batch.apply", batch)
    retried = await harness.ok("subscriptions.batch.apply", batch, ApplySubscriptionsReply)
    assert [r.name for r in retried.results] == names
    assert all(r.outcome is not ApplyOutcome.ERROR and r.generation == 1 for r in retried.results)
    assert await stored_names(harness) == names == await listed(harness)
    agent = [p["subscription"] for s, _, p in await harness.outbox() if s.startswith("fleet.v1.agent.c1.")]
    assert sorted(agent) == names  # whatever did not commit sent nothing; each workload went out once


async def test_an_apply_that_fills_a_real_sqlite_file_leaves_memory_as_the_file_is(harness: Any) -> None:
    await harness.join("c1")
    pages = int((await harness.store.fetchone("PRAGMA page_count"))[0])
    await harness.store.fetchall(f"PRAGMA max_page_count = {pages}")
    await harness.error("subscriptions.apply", spec(payload="x" * 20_000))  # the runtime says "disk full"
    assert await stored_names(harness) == [] == await listed(harness)
    await harness.store.fetchall("PRAGMA max_page_count = 1073741823")
    retried = await harness.ok("subscriptions.apply", spec(payload="x" * 20_000), ApplySubscriptionReply)
    assert retried.changed
    assert await stored_names(harness) == ["web"] == await listed(harness)


async def test_an_event_whose_commit_fails_is_handled_afresh_when_it_is_delivered_again(
    harness: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    await harness.ok("subscriptions.apply", spec(), ApplySubscriptionReply)
    fail_next_commit(harness.store, monkeypatch)
    with pytest.raises(Exception, match=DISK_FULL):
        await harness.join("c1")  # the consumer would nak it and get it again
    info = await harness.ok("subscriptions.get", {"name": "web"}, GetSubscriptionReply)
    assert info.subscription.placements == []
    await harness.join("c1")  # the redelivery: c1 is new to the scheduler again, so the workload lands
    info = await harness.ok("subscriptions.get", {"name": "web"}, GetSubscriptionReply)
    assert [p.cluster_id for p in info.subscription.placements] == ["c1"]
    assert [s for s, _, _ in await harness.outbox() if s.startswith("fleet.v1.agent.c1.")] != []


async def test_a_toleration_timer_whose_commit_fails_moves_the_workload_on_its_next_tick(
    harness: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    await harness.join("c1")
    await harness.join("c2")
    toleration = {"key": "flotilla.dev/unreachable", "operator": "Exists", "effect": "NoExecute"}
    body = spec()
    body["spec"]["policy"] |= {
        "strategy": "Divide",
        "replicas": 2,
        "tolerations": [toleration | {"toleration_seconds": 10}],
    }
    body["spec"]["manifests"] = [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {}}
    ]
    await harness.ok("subscriptions.apply", body, ApplySubscriptionReply)
    await harness.health("c1", ClusterHealth.UNREACHABLE)
    harness.clock.advance(11)
    fail_next_group_commit(harness.store, monkeypatch)
    with pytest.raises(Exception, match=DISK_FULL):
        await harness.scheduler.expire_due()
    info = await harness.ok("subscriptions.get", {"name": "web"}, GetSubscriptionReply)
    assert {p.cluster_id: p.replicas for p in info.subscription.placements} == {"c1": 1, "c2": 1}
    assert await harness.scheduler.expire_due() == 1
    info = await harness.ok("subscriptions.get", {"name": "web"}, GetSubscriptionReply)
    assert {p.cluster_id: p.replicas for p in info.subscription.placements} == {"c2": 2}
