"""A service's own SQLite file: migrations, WAL, serialized transactions, the outbox and processed-message ids."""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import msgspec

from flotilla_contracts.envelope import H_ACTOR, H_MSG_ID, H_SCHEMA, H_SENT_AT, Message, schema_id
from flotilla_runtime import actor, integrity, telemetry
from flotilla_runtime.actor import headers as actor_headers
from flotilla_runtime.errors import TemporaryError, storage_error
from flotilla_runtime.eventids import new_event_id, utc_now_iso
from flotilla_runtime.migrations import RUNTIME_MIGRATIONS, Migration

Row = sqlite3.Row
T = TypeVar("T")
_json = msgspec.json.Encoder()
_INSERT_OUTBOX = "INSERT OR IGNORE INTO outbox (msg_id, subject, headers, payload, created_at) VALUES (?, ?, ?, ?, ?)"
_INSERT_PROCESSED = "INSERT OR IGNORE INTO processed_messages (msg_id, processed_at) VALUES (?, ?)"
_SELECT_PROCESSED = "SELECT 1 FROM processed_messages WHERE msg_id = ?"
_schema_ids = functools.cache(schema_id)


def _outbox_row(
    subject: str, message: Message, msg_id: str, trace_headers: dict[str, str], actor: str = ""
) -> tuple[str, tuple[str, str, bytes, bytes, float]]:
    """The event id and outbox row of one event: schema, id, time, trace context and actor in its headers."""
    event_id = msg_id or new_event_id()
    headers = {H_SCHEMA: _schema_ids(type(message)), H_MSG_ID: event_id, H_SENT_AT: utc_now_iso(), **trace_headers}
    headers.update(actor_headers(actor))
    return event_id, (event_id, subject, _json.encode(headers), _json.encode(message), time.time())


class SyncTx:
    """A transaction run inside the database thread (see `Store.run`): the same operations as Tx, synchronous."""

    def __init__(self, conn: sqlite3.Connection, trace_headers: dict[str, str]) -> None:
        self._conn = conn
        # The caller's context arrives as one header dict (see `Store.run`); its actor names every event this
        # transaction emits, in whatever trace, and is no part of the trace context kept for later.
        self._trace_headers = {k: v for k, v in trace_headers.items() if k != H_ACTOR}
        self._actor = trace_headers.get(H_ACTOR, "")
        self.emitted = 0

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> int:
        return self._conn.execute(sql, params).rowcount

    def executemany(self, sql: str, params: Iterable[Sequence[Any]]) -> None:
        self._conn.executemany(sql, params)

    def fetchone(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Row | None:
        row: Row | None = self._conn.execute(sql, params).fetchone()
        return row

    def fetchall(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[Row]:
        return list(self._conn.execute(sql, params).fetchall())

    @property
    def trace_headers(self) -> dict[str, str]:
        """The trace context of the caller of `Store.run` (W3C headers), e.g. to keep with a long-lived record."""
        return dict(self._trace_headers)

    @property
    def actor(self) -> str:
        """Who the command this work serves came from (`CommandContext.actor`), "" when no command caused it."""
        return self._actor

    @contextmanager
    def in_current_trace(self) -> Iterator[None]:
        """Emit (and give `trace_headers`) in the trace current in this thread for the block, then the caller's
        again: a batched consumer opens a span per event in the database thread and what that event causes
        joins the event's trace."""
        saved = self._trace_headers
        self._trace_headers = dict(telemetry.inject({}))
        try:
            yield
        finally:
            self._trace_headers = saved

    def emit(
        self, subject: str, message: Message, *, msg_id: str = "", trace_headers: dict[str, str] | None = None
    ) -> str:
        """Queue an event; `trace_headers` puts it in another trace than the caller's (a rollout's own)."""
        headers = self._trace_headers if trace_headers is None else trace_headers
        event_id, row = _outbox_row(subject, message, msg_id, headers, self._actor)
        self._conn.execute(_INSERT_OUTBOX, row)
        self.emitted += 1
        return event_id

    def seen(self, msg_id: str) -> bool:
        return self._conn.execute(_SELECT_PROCESSED, (msg_id,)).fetchone() is not None

    def mark_processed(self, msg_id: str) -> None:
        self._conn.execute(_INSERT_PROCESSED, (msg_id, time.time()))


class Tx:
    """One open transaction: SQL, outbox events and processed-message marks, committed together."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        self.emitted = 0

    async def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> int:
        """Run one statement; returns the number of rows changed."""
        cursor = await self._db.execute(sql, params)
        return cursor.rowcount

    async def executemany(self, sql: str, params: Iterable[Sequence[Any]]) -> None:
        await self._db.executemany(sql, params)

    async def fetchone(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Row | None:
        async with self._db.execute(sql, params) as cursor:
            row: Row | None = await cursor.fetchone()
            return row

    async def fetchall(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[Row]:
        async with self._db.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def emit(self, subject: str, message: Message, *, msg_id: str = "") -> str:
        """Queue an event in the outbox; it is published only if this transaction commits. Returns its id."""
        event_id = msg_id or new_event_id()
        headers = telemetry.inject({H_SCHEMA: schema_id(type(message)), H_MSG_ID: event_id, H_SENT_AT: utc_now_iso()})
        headers.update(actor_headers(actor.current()))
        await self._db.execute(
            "INSERT OR IGNORE INTO outbox (msg_id, subject, headers, payload, created_at) VALUES (?, ?, ?, ?, ?)",
            (event_id, subject, _json.encode(dict(headers)), _json.encode(message), time.time()),
        )
        self.emitted += 1
        return event_id

    async def seen(self, msg_id: str) -> bool:
        """True when this message id was already processed (its effects are committed)."""
        row = await self.fetchone("SELECT 1 FROM processed_messages WHERE msg_id = ?", (msg_id,))
        return row is not None

    async def mark_processed(self, msg_id: str) -> None:
        await self._db.execute(
            "INSERT OR IGNORE INTO processed_messages (msg_id, processed_at) VALUES (?, ?)",
            (msg_id, time.time()),
        )


# A queued unit of work for `Store.run`: the function, the caller's trace headers, the caller's future.
_Work = tuple[Callable[["SyncTx"], Any], dict[str, str], "asyncio.Future[Any]"]


class Store:
    """The only way a service touches its SQLite file. Transactions are serialized in-process."""

    def __init__(self, db: aiosqlite.Connection, path: str) -> None:
        self._db = db
        self.path = path
        self._lock = asyncio.Lock()
        self._commit_hooks: list[Callable[[], None]] = []
        self._queue: list[_Work] = []
        self._drainer: asyncio.Task[None] | None = None
        self.max_group = 256

    @classmethod
    async def open(cls, path: str | Path, migrations: Sequence[Migration] = (), *, service: str = "") -> Store:
        """Open (a private folder and file: 0700, 0600), refuse a damaged file (`StateRefused`, saying how
        `service`'s file is restored), switch to WAL, apply the runtime's and the service's migrations."""
        target = Path(path)
        memory = str(target) == ":memory:"
        if not memory:
            integrity.private_database(target)
        try:
            db = await aiosqlite.connect(str(target), isolation_level=None)
        except sqlite3.Error as exc:
            raise TemporaryError(f"cannot open the state database {target}: {exc}") from exc
        db.row_factory = sqlite3.Row
        store = cls(db, str(target) if memory else str(target.resolve()))  # noqa: ASYNC240 - once at start
        try:
            if not memory:
                advice = integrity.restore_advice(service, store.path)
                await db._execute(integrity.check_database, db._conn, store.path, advice)  # type: ignore[no-untyped-call]
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=NORMAL")
            await db.execute("PRAGMA foreign_keys=ON")
            await db.execute("PRAGMA busy_timeout=5000")
            await store._migrate([*RUNTIME_MIGRATIONS, *migrations])
        except BaseException:
            await db.close()  # its thread would otherwise keep the process alive
            raise
        return store

    async def _migrate(self, migrations: Sequence[Migration]) -> None:
        await self._db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            "track TEXT NOT NULL, number INTEGER NOT NULL, name TEXT NOT NULL, applied_at REAL NOT NULL, "
            "PRIMARY KEY (track, number))"
        )
        async with self._db.execute("SELECT track, number FROM schema_migrations") as cursor:
            applied = {(row[0], row[1]) for row in await cursor.fetchall()}
        for migration in migrations:
            if (migration.track, migration.number) in applied:
                continue
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                for statement in _statements(migration.sql):
                    await self._db.execute(statement)
                await self._db.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?, ?, ?)",
                    (migration.track, migration.number, migration.name, time.time()),
                )
                await self._db.execute("COMMIT")
            except Exception:
                await self._db.execute("ROLLBACK")
                raise

    def on_commit(self, hook: Callable[[], None]) -> None:
        """Call `hook` after every commit that emitted events (the outbox relay's wake-up)."""
        self._commit_hooks.append(hook)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        """`async with store.transaction() as tx:` commits on success, rolls back on any error.

        A cancellation can land while BEGIN or COMMIT is already queued to the database thread; the
        rollback therefore checks the connection itself and is shielded, so no transaction is left open.
        """
        async with self._lock:
            tx = Tx(self._db)
            try:
                await self._db.execute("BEGIN IMMEDIATE")
                yield tx
                await self._db.execute("COMMIT")
            except BaseException as exc:
                await asyncio.shield(self._rollback_if_open())
                temporary = storage_error(exc, self._where)
                if temporary is not None:  # disk full or busy: the caller retries or answers `unavailable`
                    raise temporary from exc
                raise
        if tx.emitted:
            for hook in self._commit_hooks:
                hook()

    async def _rollback_if_open(self) -> None:
        def rollback() -> None:
            if self._db._conn.in_transaction:
                self._db._conn.execute("ROLLBACK")

        await self._db._execute(rollback)  # type: ignore[no-untyped-call]

    async def run(self, work: Callable[[SyncTx], T]) -> T:
        """Run `work(tx)` inside the database thread, group-committed with whatever else is waiting.

        Works queued while a transaction is in flight go together into the next one: one thread hop
        and one COMMIT for the lot, each work inside its own SAVEPOINT, so a work that raises is
        rolled back alone and its caller gets the exception while the others commit. `work` must be
        synchronous and must not block on anything but the database.
        """
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((work, {**telemetry.inject({}), **actor_headers(actor.current())}, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain(), name="store-group-commit")
        return await future

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[: self.max_group], self._queue[self.max_group :]
            try:
                async with self._lock:
                    # aiosqlite has no public "run this in the connection thread"; this is the one place that
                    # reaches past its API, so a change there breaks here and nowhere else.
                    outcomes, emitted = await self._db._execute(self._run_group, batch)  # type: ignore[no-untyped-call]
            except BaseException as exc:  # the COMMIT itself failed: nobody's work is durable
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(
                            storage_error(exc, self._where)
                            or TemporaryError(f"the state database {self.path} did not commit: {exc}")
                        )
                continue
            for (_, _, future), (ok, value) in zip(batch, outcomes, strict=True):
                if not future.done():
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(value)
            if emitted:
                for hook in self._commit_hooks:
                    hook()

    def _run_group(self, batch: list[_Work]) -> tuple[list[tuple[bool, Any]], int]:
        conn = self._db._conn
        outcomes: list[tuple[bool, Any]] = []
        emitted = 0
        conn.execute("BEGIN IMMEDIATE")
        try:
            for work, trace_headers, _ in batch:
                tx = SyncTx(conn, trace_headers)
                conn.execute("SAVEPOINT work")
                try:
                    value = work(tx)
                except Exception as exc:
                    if not conn.in_transaction:  # SQLite rolled everything back itself (disk full): nothing is durable
                        raise
                    conn.execute("ROLLBACK TO work")
                    conn.execute("RELEASE work")
                    outcomes.append((False, storage_error(exc, self._where) or exc))
                    continue
                conn.execute("RELEASE work")
                outcomes.append((True, value))
                emitted += tx.emitted
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # a failed COMMIT (disk full) may already have rolled back
                conn.execute("ROLLBACK")
            raise
        return outcomes, emitted

    @property
    def _where(self) -> str:
        return f"the state database {self.path}"

    async def fetchall(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[Row]:
        """A read outside any transaction (WAL gives it a consistent snapshot)."""
        async with self._lock, self._db.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def fetchone(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def pending_outbox(self, limit: int, *, after: int = 0) -> list[Row]:
        """The oldest `limit` events after seq `after`, in commit order (seqs only grow: AUTOINCREMENT)."""
        return await self.fetchall(
            "SELECT seq, msg_id, subject, headers, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, limit),
        )

    async def forget_outbox(self, first: int, last: int) -> None:
        """Forget the published events `first`..`last` (a run read by `pending_outbox`) in one statement; runs
        to completion in the database thread even if the caller is cancelled."""
        await self.run(lambda tx: tx.execute("DELETE FROM outbox WHERE seq BETWEEN ? AND ?", (first, last)))

    async def outbox_size(self) -> int:
        row = await self.fetchone("SELECT COUNT(*) FROM outbox")
        return int(row[0]) if row else 0

    async def prune_processed(self, older_than_s: float) -> int:
        async with self._lock:
            cursor = await self._db.execute(
                "DELETE FROM processed_messages WHERE processed_at < ?", (time.time() - older_than_s,)
            )
            return cursor.rowcount

    async def close(self) -> None:
        await self._db.close()


def _statements(sql: str) -> list[str]:
    """Split a migration into statements, a trigger's BEGIN ... END with its inner ones kept whole (SQLite says when
    a statement is complete); a trailing part that never completes is kept, for SQLite to refuse by name."""
    statements, pending = [], ""
    for part in sql.split(";"):
        pending += part + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n\t;"):
                statements.append(pending.strip().rstrip(";").strip())
            pending = ""
    if pending.strip(" \n\t;"):
        statements.append(pending.strip().rstrip(";").strip())
    return statements
