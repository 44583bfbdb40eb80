"""The store commits state and events together, or neither; migrations run once; processed ids persist."""

import asyncio
import os
import re
import sqlite3
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flotilla_contracts.envelope import Message
from flotilla_runtime.eventids import new_event_id, utc_now_iso
from flotilla_runtime.migrations import Migration
from flotilla_runtime.store import Store, SyncTx
from flotilla_testkit import eventually


class Happened(Message, frozen=True, kw_only=True):
    SCHEMA = "test.Happened"
    what: str


MIGRATIONS = [Migration("svc", 1, "things", "CREATE TABLE things (id TEXT PRIMARY KEY, n INTEGER NOT NULL)")]


async def test_state_and_events_commit_together(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s.db", MIGRATIONS)
    async with store.transaction() as tx:
        await tx.execute("INSERT INTO things VALUES ('a', 1)")
        event_id = await tx.emit("fleet.v1.evt.cluster.a.approved", Happened(what="a"))
    rows = await store.pending_outbox(10)
    assert [row["msg_id"] for row in rows] == [event_id]
    assert rows[0]["subject"] == "fleet.v1.evt.cluster.a.approved"
    await store.close()


async def test_rollback_drops_state_and_events(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s.db", MIGRATIONS)
    with pytest.raises(RuntimeError):
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO things VALUES ('a', 1)")
            await tx.emit("fleet.v1.evt.cluster.a.approved", Happened(what="a"))
            raise RuntimeError("handler failed after writing")
    assert await store.fetchall("SELECT * FROM things") == []
    assert await store.outbox_size() == 0
    await store.close()


async def test_migrations_apply_once_and_survive_reopen(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s.db", MIGRATIONS)
    async with store.transaction() as tx:
        await tx.execute("INSERT INTO things VALUES ('a', 1)")
        await tx.mark_processed("msg-1")
    await store.close()
    reopened = await Store.open(tmp_path / "s.db", MIGRATIONS)  # would fail if the CREATE ran again
    row = await reopened.fetchone("SELECT n FROM things WHERE id = 'a'")
    assert row is not None and row["n"] == 1
    async with reopened.transaction() as tx:
        assert await tx.seen("msg-1")
        assert not await tx.seen("msg-2")
    await reopened.close()


async def test_database_uses_wal(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s.db")
    row = await store.fetchone("PRAGMA journal_mode")
    assert row is not None and row[0] == "wal"
    await store.close()


async def test_commit_hook_fires_only_when_events_were_emitted(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s.db", MIGRATIONS)
    calls: list[int] = []
    store.on_commit(lambda: calls.append(1))
    async with store.transaction() as tx:
        await tx.execute("INSERT INTO things VALUES ('a', 1)")
    async with store.transaction() as tx:
        await tx.emit("fleet.v1.evt.cluster.a.approved", Happened(what="a"))
    assert calls == [1]
    await store.close()


async def test_run_commits_sql_and_events_in_one_thread_hop(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s.db", MIGRATIONS)
    woken: list[int] = []
    store.on_commit(lambda: woken.append(1))

    def work(tx: SyncTx) -> str:
        tx.execute("INSERT INTO things VALUES ('a', 1)")
        tx.mark_processed("m1")
        return tx.emit("fleet.v1.evt.cluster.a.approved", Happened(what="a"))

    event_id = await store.run(work)
    assert [row["msg_id"] for row in await store.pending_outbox(5)] == [event_id]
    assert woken == [1]
    async with store.transaction() as tx:
        assert await tx.seen("m1")
    await store.close()


async def test_run_rolls_back_everything_on_error(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s.db", MIGRATIONS)

    def work(tx: SyncTx) -> None:
        tx.execute("INSERT INTO things VALUES ('a', 1)")
        tx.emit("fleet.v1.evt.cluster.a.approved", Happened(what="a"))
        raise ValueError("refused halfway")

    with pytest.raises(ValueError, match="halfway"):
        await store.run(work)
    assert await store.fetchall("SELECT * FROM things") == []
    assert await store.outbox_size() == 0
    await store.close()


async def test_a_failing_migration_closes_the_database(tmp_path: Path) -> None:
    def workers() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if "_connection_worker_thread" in t.name}

    before = workers()
    broken = [Migration("svc", 1, "broken", "CREATE TABLE oops (")]
    with pytest.raises(sqlite3.OperationalError):
        await Store.open(tmp_path / "s.db", broken)
    await eventually(lambda: workers() <= before, "the failed store's database thread to end", timeout_s=5)


async def test_concurrent_runs_group_commit_and_a_failure_stays_alone(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s.db", MIGRATIONS)

    def insert(key: str) -> Callable[[SyncTx], str]:
        def work(tx: SyncTx) -> str:
            tx.execute("INSERT INTO things VALUES (?, 1)", (key,))
            tx.emit(f"fleet.v1.evt.cluster.{key}.approved", Happened(what=key))
            if key == "k3":
                raise ValueError("k3 refused after writing")
            return key

        return work

    results = await asyncio.gather(*(store.run(insert(f"k{i}")) for i in range(8)), return_exceptions=True)
    assert [r if isinstance(r, str) else type(r).__name__ for r in results] == [
        "k0", "k1", "k2", "ValueError", "k4", "k5", "k6", "k7",
    ]  # fmt: skip
    rows = await store.fetchall("SELECT id FROM things ORDER BY id")
    assert [row["id"] for row in rows] == ["k0", "k1", "k2", "k4", "k5", "k6", "k7"]
    assert await store.outbox_size() == 7
    await store.close()


async def test_a_cancelled_transaction_leaves_no_transaction_open(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s.db", MIGRATIONS)
    entered = asyncio.Event()

    async def slow_writer() -> None:
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO things VALUES ('cancelled', 1)")
            entered.set()
            await asyncio.sleep(10)  # sleep: a writer that holds its transaction open until the test cancels it

    for _ in range(20):  # cancel at many different points, including during BEGIN
        task = asyncio.create_task(slow_writer())
        await asyncio.sleep(0)  # sleep: one yield to the loop, so each cancel lands at a different point
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)
    task = asyncio.create_task(slow_writer())
    await asyncio.wait_for(entered.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)

    async def write_after() -> None:  # fails ("transaction within a transaction") or hangs if one was left open
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO things VALUES ('after', 1)")

    await asyncio.wait_for(write_after(), 5)
    assert [row["id"] for row in await store.fetchall("SELECT id FROM things")] == ["after"]
    await store.close()


def test_event_times_are_rfc3339_utc_milliseconds_that_keep_up_with_the_clock() -> None:
    before = datetime.now(UTC) - timedelta(milliseconds=1)
    stamps = [utc_now_iso() for _ in range(2_000)]
    after = datetime.now(UTC) + timedelta(milliseconds=1)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", s) for s in stamps)
    parsed = [datetime.fromisoformat(s) for s in stamps]
    assert parsed == sorted(parsed)
    assert before <= parsed[0] and parsed[-1] <= after


def test_event_ids_are_uuid7_and_a_forked_child_never_repeats_its_parents() -> None:
    ids = [new_event_id() for _ in range(5_000)]
    assert len(set(ids)) == len(ids)
    assert all(uuid.UUID(hex=i).version == 7 for i in ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the next ids it would hand out, to the parent
        os.write(write, ",".join(new_event_id() for _ in range(50)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as pipe:
        child = pipe.read().split(",")
    parent = [new_event_id() for _ in range(50)]
    assert len(child) == 50
    assert {i[12:] for i in child}.isdisjoint(i[12:] for i in parent)
