"""The outbox relay: publishes committed events to JetStream, pipelined, with Nats-Msg-Id = event id."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from flotilla_runtime.errors import TemporaryError
from flotilla_runtime.store import Row, Store

log = logging.getLogger(__name__)
_headers_decoder = msgspec.json.Decoder(dict[str, str])
_STATUS = "Status"  # a status message instead of an ack: 503 when no stream stores the subject
_WAITING, _STORED, _REFUSED = 0, 1, 2


class Publisher(Protocol):
    """What the relay needs of JetStream: nats-py's pipelined publish (a JetStreamContext has it)."""

    async def publish_async(
        self,
        subject: str,
        payload: bytes = b"",
        wait_stall: float | None = None,
        stream: str | None = None,
        headers: dict[str, Any] | None = None,
        msg_ttl: float | None = None,
    ) -> asyncio.Future[Any]: ...


class _Acks:
    """JetStream's answers to one batch, by position: `done` once every event is answered (stored or refused)."""

    __slots__ = ("done", "errors", "key", "states", "waiting")

    def __init__(self, key: int, size: int) -> None:
        self.key = key
        self.states = bytearray(size)  # _WAITING, _STORED or _REFUSED per event
        self.waiting = size
        self.errors: dict[int, BaseException] = {}
        self.done = asyncio.Event()
        if not size:
            self.done.set()

    def answer(self, index: int, error: BaseException | None = None) -> None:
        if self.states[index] != _WAITING:
            return  # a second answer (a re-delivered ack) changes nothing
        self.states[index] = _STORED if error is None else _REFUSED
        if error is not None:
            self.errors[index] = error
        self.waiting -= 1
        if not self.waiting:
            self.done.set()

    def stored(self) -> int:
        """How many events from the first one on were stored: the run that may be forgotten."""
        return len(self.states) - len(self.states.lstrip(b"\x01"))


class _AckInbox:
    """JetStream publishes as what they are on the wire: core publishes whose reply subject is one wildcard
    subscription of the relay (`<inbox>.<batch>.<index>`), an ack read by a byte test instead of a future, a
    JSON parse and a PubAck per event (nats-py's `publish_async`: about 2.5x the CPU per event here)."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._prefix = ""
        self._next = 0
        self._open: dict[int, _Acks] = {}

    async def send(self, rows: list[Row]) -> _Acks:
        if not self._prefix:
            prefix = self._nc.new_inbox() + "."  # the connection's inbox prefix: what its permissions allow
            await self._nc.subscribe(prefix + "*.*", cb=self._on_ack)
            self._prefix = prefix
        self._next += 1
        acks = self._open[self._next] = _Acks(self._next, len(rows))
        reply, publish, decode = f"{self._prefix}{self._next}.", self._nc.publish, _headers_decoder.decode
        try:
            for index, row in enumerate(rows):
                await publish(row["subject"], row["payload"], f"{reply}{index}", decode(row["headers"]))
        except BaseException:
            self.forget(acks)
            raise
        return acks

    def forget(self, acks: _Acks) -> None:
        """Stop waiting for a batch's acks: a late one finds nobody waiting."""
        self._open.pop(acks.key, None)

    async def _on_ack(self, msg: Msg) -> None:
        batch, _, index = msg.subject[len(self._prefix) :].partition(".")
        acks = self._open.get(int(batch)) if batch.isdigit() else None
        if acks is None or not index.isdigit() or int(index) >= len(acks.states):
            return
        data = msg.data
        if msg.headers and _STATUS in msg.headers:
            error: TemporaryError | None = TemporaryError(
                f"no JetStream stream answered ({msg.headers[_STATUS]} {msg.headers.get('Description', '')})"
            )
        elif b'"error"' in data or b'"stream"' not in data:
            error = TemporaryError(f"JetStream refused the event: {data.decode(errors='replace')[:300]}")
        else:
            error = None
        acks.answer(int(index), error)


async def _send_through(js: Publisher, rows: list[Row]) -> tuple[_Acks, Callable[[], None]]:
    """A batch sent through any `Publisher` (nats-py's pipelined publish, one future per event); what cancels
    its futures (frees nats-py's pending-publish slots; a late ack finds nobody waiting)."""
    acks = _Acks(0, len(rows))
    futures: list[asyncio.Future[Any]] = []
    publish, decode = js.publish_async, _headers_decoder.decode

    def answered(index: int) -> Callable[[asyncio.Future[Any]], None]:
        def done(future: asyncio.Future[Any]) -> None:
            if not future.cancelled():
                acks.answer(index, future.exception())

        return done

    try:
        for index, row in enumerate(rows):
            future = await publish(row["subject"], row["payload"], headers=decode(row["headers"]))
            future.add_done_callback(answered(index))
            futures.append(future)
    except BaseException:
        for future in futures:
            future.cancel()
        raise

    def cancel() -> None:
        for future in futures:
            future.cancel()

    return acks, cancel


# What is in flight: a batch of outbox rows (oldest first), JetStream's answers so far, what gives up on them.
_Sent = tuple[list[Row], _Acks, Callable[[], None]]


class OutboxRelay:
    """Publishes outbox rows in commit order; a row is deleted only after JetStream acknowledged it.

    Up to `window` batches are in flight: while JetStream acknowledges one, the next is read and sent, and a
    batch's rows are forgotten in one statement once every one of them is acknowledged, batches in order.
    When an event is refused or not answered within `ack_timeout_s`, nothing after it is deleted: it and
    everything behind it are published again (the copies JetStream already holds are dropped by their
    Nats-Msg-Id). A crash between the ack and the delete re-publishes the row on restart, de-duplicated the same
    way (within the stream's duplicate window). Given a JetStreamContext, events go out as core publishes with
    their acks on one subscription of the relay (see _AckInbox); any other Publisher through `publish_async`.
    """

    def __init__(
        self,
        store: Store,
        js: JetStreamContext | Publisher,
        *,
        batch: int = 1000,
        window: int = 3,
        poll_s: float = 1.0,
        prepare: Callable[[list[Row]], Awaitable[None]] | None = None,
        ack_timeout_s: float = 10.0,
    ) -> None:
        self._store = store
        # Called with each batch before it is published (e.g. create the consumers its commands go to); if it
        # raises, nothing of the batch is published and the relay tries again with back-off.
        self._prepare = prepare
        self._js = js
        # A JetStreamContext's own connection carries the core publishes and their acks (see _AckInbox); any
        # other Publisher (a node's routes over several connections) is used as it is.
        self._inbox = _AckInbox(js._nc) if isinstance(js, JetStreamContext) else None
        self._batch = batch
        self._window = window  # batches in flight (through publish_async: under nats-py's 4,000 pending)
        self._poll_s = poll_s
        self._ack_timeout_s = ack_timeout_s  # an event unanswered this long is published again, with all behind it
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.published = 0
        self.failures = 0
        self.last_error = ""
        self.oldest_pending_at = 0.0
        store.on_commit(self._wake.set)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self, flush_timeout_s: float = 5.0) -> None:
        """Stop the loop, then publish what is left (bounded by the timeout)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        try:
            await asyncio.wait_for(self.flush(), flush_timeout_s)
        except (TimeoutError, nats.errors.Error, TemporaryError) as exc:
            left = await self._store.outbox_size()
            log.warning("outbox not fully flushed at stop (%s); %d events will be published on restart", exc, left)

    async def flush(self) -> None:
        """Publish until the outbox is empty."""
        await self._pump()

    async def _run(self) -> None:
        delay = 0.0
        while True:
            if delay:
                await asyncio.sleep(delay)
            else:
                try:
                    await asyncio.wait_for(self._wake.wait(), self._poll_s)
                except TimeoutError:
                    pass
            self._wake.clear()
            try:
                await self._pump()
                delay = 0.0
            except (nats.errors.Error, nats.js.errors.Error, TimeoutError, OSError, TemporaryError) as exc:
                # TemporaryError: the store could not forget what was published (disk full); it is sent again
                # (JetStream drops the duplicates by event id) once the store can write.
                self.failures += 1
                self.last_error = str(exc) or type(exc).__name__
                self.oldest_pending_at = self.oldest_pending_at or time.time()
                delay = min(max(delay * 2, 0.2), 10.0)
                log.warning("outbox publish failed (%s); retrying in %.1fs", self.last_error, delay)

    async def _pump(self) -> None:
        """Publish until a read finds no full batch, `window` batches in flight (see the class docstring)."""
        sent: deque[_Sent] = deque()
        after = 0  # the last seq read: the next batch follows it (what is in flight is not deleted yet)
        more = True
        try:
            while more or sent:
                if more and len(sent) < self._window:
                    rows = await self._store.pending_outbox(self._batch, after=after)
                    more = len(rows) == self._batch
                    if rows:
                        after = rows[-1]["seq"]
                        sent.append(await self._send(rows))
                    continue
                await self._settle(*sent.popleft())
        except BaseException:
            for _, _, cancel in sent:  # not deleted: published again by the next round, de-duplicated by event id
                cancel()
            raise
        self.oldest_pending_at = 0.0

    async def _send(self, rows: list[Row]) -> _Sent:
        if self._prepare is not None:
            await self._prepare(rows)
        if self._inbox is None:
            return (rows, *await _send_through(self._js, rows))
        inbox = self._inbox
        acks = await inbox.send(rows)
        return rows, acks, lambda: inbox.forget(acks)

    async def _settle(self, rows: list[Row], acks: _Acks, cancel: Callable[[], None]) -> None:
        """Wait for one batch's acks; forget the rows stored before the first refused or unanswered one, then
        raise: that one and everything behind it are published again (nothing after it is deleted)."""
        try:
            await asyncio.wait_for(acks.done.wait(), self._ack_timeout_s)
        except TimeoutError:
            pass
        finally:
            cancel()
        stored = acks.stored()
        if stored:
            await self._store.forget_outbox(rows[0]["seq"], rows[stored - 1]["seq"])
            self.published += stored
        if stored < len(rows):
            row, error = rows[stored], acks.errors.get(stored)
            if isinstance(error, TemporaryError):
                raise TemporaryError(
                    f"event {row['msg_id']} on {row['subject']}: {error}; it and the events behind it are published"
                    " again"
                )
            if error is not None:
                raise error
            raise TimeoutError(
                f"JetStream did not acknowledge {acks.waiting} of {len(rows)} events within {self._ack_timeout_s}s"
                f" (event {row['msg_id']} on {row['subject']} first); they are published again"
            )
