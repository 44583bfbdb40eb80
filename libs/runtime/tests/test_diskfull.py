"""A full disk is `unavailable` with "disk full" and what happens next, never `internal`; nothing half-written."""

import errno
import sqlite3
from pathlib import Path

import pytest

from flotilla_contracts.envelope import Message
from flotilla_runtime.errors import DiskFullError, TemporaryError, storage_error
from flotilla_runtime.migrations import Migration
from flotilla_runtime.store import Store, SyncTx


class Happened(Message, frozen=True, kw_only=True):
    SCHEMA = "test.Happened"
    what: str


MIGRATIONS = [Migration("svc", 1, "blobs", "CREATE TABLE blobs (id TEXT PRIMARY KEY, data BLOB NOT NULL)")]
BIG = b"x" * 200_000


async def full_store(tmp_path: Path) -> Store:
    """A store whose database cannot grow by another page: SQLite answers SQLITE_FULL, as on a full volume."""
    store = await Store.open(tmp_path / "s.db", MIGRATIONS)

    def cap(tx: SyncTx) -> None:
        row = tx.fetchone("PRAGMA page_count")
        assert row is not None
        tx.fetchone(f"PRAGMA max_page_count = {int(row[0]) + 2}")

    await store.run(cap)
    return store


async def test_a_full_database_in_a_group_commit_is_disk_full_and_keeps_nothing(tmp_path: Path) -> None:
    store = await full_store(tmp_path)

    def write(tx: SyncTx) -> None:
        tx.execute("INSERT INTO blobs VALUES ('a', ?)", (BIG,))
        tx.emit("fleet.v1.evt.cluster.a.approved", Happened(what="a"))

    with pytest.raises(DiskFullError) as caught:
        await store.run(write)
    assert str(caught.value).startswith("disk full: the state database ")
    assert "nothing was changed" in str(caught.value) and "Free space" in str(caught.value)
    assert await store.fetchall("SELECT id FROM blobs") == []
    assert await store.outbox_size() == 0
    await store.run(lambda tx: tx.execute("INSERT INTO blobs VALUES ('small', x'00')"))  # still usable
    assert [row["id"] for row in await store.fetchall("SELECT id FROM blobs")] == ["small"]
    await store.close()


async def test_a_full_database_in_a_transaction_is_disk_full_and_rolled_back(tmp_path: Path) -> None:
    store = await full_store(tmp_path)
    with pytest.raises(DiskFullError, match="disk full"):
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO blobs VALUES ('a', ?)", (BIG,))
            await tx.emit("fleet.v1.evt.cluster.a.approved", Happened(what="a"))
    assert await store.fetchall("SELECT id FROM blobs") == []
    assert await store.outbox_size() == 0
    await store.close()


def test_storage_errors_are_classified_by_what_happens_next() -> None:
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = sqlite3.SQLITE_FULL  # type: ignore[attr-defined]
    assert isinstance(storage_error(full, "db"), DiskFullError)
    busy = sqlite3.OperationalError("database is locked")
    busy.sqlite_errorcode = sqlite3.SQLITE_BUSY  # type: ignore[attr-defined]
    classified = storage_error(busy, "db")
    assert type(classified) is TemporaryError and "busy" in str(classified)
    no_space = OSError(errno.ENOSPC, "No space left on device", "/state/key")
    assert str(storage_error(no_space, "db")).startswith("disk full: /state/key could not be written")
    assert storage_error(sqlite3.IntegrityError("UNIQUE constraint failed"), "db") is None
    assert storage_error(OSError(errno.EACCES, "Permission denied"), "db") is None
    assert storage_error(ValueError("x"), "db") is None
