"""The outbox relay: publishes committed events to JetStream, pipelined, with Nats-Msg-Id = event id."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

import msgspec
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext

from flotilla_runtime.errors import TemporaryError
from flotilla_runtime.store import Store

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


class OutboxRelay:
    """Publishes outbox rows in commit order; a row is deleted only after JetStream acknowledged it.

    A crash between the ack and the delete re-publishes the row on restart; JetStream drops the
    copy because the Nats-Msg-Id is the same (within the stream's duplicate window).
    """

    def __init__(
        self, store: Store, js: JetStreamContext | Publisher, *, batch: int = 256, poll_s: float = 1.0
    ) -> None:
        self._store = store
        self._js = js
        self._batch = batch
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
        while await self._publish_batch():
            pass

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
                while await self._publish_batch():
                    pass
                delay = 0.0
            except (nats.errors.Error, nats.js.errors.Error, TimeoutError, OSError, TemporaryError) as exc:
                # TemporaryError: the store could not forget what was published (disk full); it is sent again
                # (JetStream drops the duplicates by event id) once the store can write.
                self.failures += 1
                self.last_error = str(exc) or type(exc).__name__
                delay = min(max(delay * 2, 0.2), 10.0)
                log.warning("outbox publish failed (%s); retrying in %.1fs", self.last_error, delay)

    async def _publish_batch(self) -> bool:
        """Publish one batch; True when a full batch went out (there may be more)."""
        rows = await self._store.pending_outbox(self._batch)
        if not rows:
            self.oldest_pending_at = 0.0
            return False
        futures: list[asyncio.Future[Any]] = []
        for row in rows:
            futures.append(
                await self._js.publish_async(
                    row["subject"], row["payload"], headers=_headers_decoder.decode(row["headers"])
                )
            )
        try:
            results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), self._ack_timeout_s)
        except TimeoutError:
            raise TimeoutError(
                f"JetStream did not acknowledge {len(rows)} events within {self._ack_timeout_s}s"
            ) from None
        done: list[int] = []
        first_error: BaseException | None = None
        for row, result in zip(rows, results, strict=True):
            if isinstance(result, BaseException):
                first_error = first_error or result
                break  # keep order: nothing after a failed event is deleted
            done.append(row["seq"])
        await self._store.delete_outbox(done)
        self.published += len(done)
        if first_error is not None:
            self.oldest_pending_at = self.oldest_pending_at or time.time()
            raise first_error
        return len(rows) == self._batch
