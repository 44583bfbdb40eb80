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
from nats.js import JetStreamContext

from flotilla_runtime.errors import TemporaryError
from flotilla_runtime.store import Row, Store

log = logging.getLogger(__name__)
_headers_decoder = msgspec.json.Decoder(dict[str, str])


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


# What is in flight: a batch of outbox rows (oldest first) and their JetStream acks, in the same order.
_Sent = tuple[list[Row], list["asyncio.Future[Any]"]]


class OutboxRelay:
    """Publishes outbox rows in commit order; a row is deleted only after JetStream acknowledged it.

    Up to `window` batches are in flight: while JetStream acknowledges one, the next is read and sent, and a
    batch's rows are forgotten in one statement once every one of them is acknowledged, batches in order.
    When an event fails, nothing after it is deleted: it and everything behind it are published again (the
    copies JetStream already holds are dropped by their Nats-Msg-Id). A crash between the ack and the delete
    re-publishes the row on restart, de-duplicated the same way (within the stream's duplicate window).
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
    ) -> None:
        self._store = store
        # Called with each batch before it is published (e.g. create the consumers its commands go to); if it
        # raises, nothing of the batch is published and the relay tries again with back-off.
        self._prepare = prepare
        self._js = js
        self._batch = batch
        self._window = window  # batches in flight: batch x window stays under nats-py's 4,000 pending publishes
        self._poll_s = poll_s
        self._ack_timeout_s = 10.0
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
                        sent.append((rows, await self._send(rows)))
                    continue
                await self._settle(*sent.popleft())
        except BaseException:
            for _, futures in sent:  # not deleted: published again by the next round, de-duplicated by event id
                for future in futures:
                    future.cancel()  # frees nats-py's pending-publish slots; a late ack finds nobody waiting
            raise
        self.oldest_pending_at = 0.0

    async def _send(self, rows: list[Row]) -> list[asyncio.Future[Any]]:
        if self._prepare is not None:
            await self._prepare(rows)
        futures: list[asyncio.Future[Any]] = []
        publish, decode = self._js.publish_async, _headers_decoder.decode
        try:
            for row in rows:
                futures.append(await publish(row["subject"], row["payload"], headers=decode(row["headers"])))
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        return futures

    async def _settle(self, rows: list[Row], futures: list[asyncio.Future[Any]]) -> None:
        """Wait for one batch's acks; forget the acknowledged rows before the first failure, then raise it."""
        try:
            results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), self._ack_timeout_s)
        except TimeoutError:
            raise TimeoutError(
                f"JetStream did not acknowledge {len(rows)} events within {self._ack_timeout_s}s"
            ) from None
        acked = next((i for i, result in enumerate(results) if isinstance(result, BaseException)), len(rows))
        if acked:
            await self._store.forget_outbox(rows[0]["seq"], rows[acked - 1]["seq"])
            self.published += acked
        if acked < len(rows):
            raise results[acked]  # keep order: nothing after a failed event is deleted
