"""Reading the event streams with ordered, ephemeral consumers: replay from a time, then follow or stop.

Events live in two streams (flotilla_contracts.streams): FLEET_EVENTS, what the services emit, and FLEET_REPORTS,
what members report. A filter within one stream reads that one; a wider one reads both, merged by time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from flotilla_client.errors import ClientError, UsageError
from flotilla_contracts import subjects
from flotilla_contracts.envelope import H_ACTOR, H_MSG_ID, H_SCHEMA, H_TRACEPARENT
from flotilla_contracts.errors import ErrorCode
from flotilla_contracts.streams import FLEET_EVENTS, event_streams_for

POLL_S = 1.0


class EventRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One stored event: where and when, its schema and id headers, and its decoded JSON body."""

    subject: str
    seq: int
    time: datetime
    schema: str = ""
    msg_id: str = ""
    data: Any = None
    stream: str = ""  # `seq` counts within it
    actor: str = ""  # the person whose command caused it (`admin`: the built-in admin), "" for no command's
    trace_id: str = ""  # the trace it belongs to: every event one command caused shares it


def event_filter(pattern: str | None) -> str:
    """`cluster.>` -> `fleet.v1.evt.cluster.>`; a full `fleet.v1.evt...` pattern is kept; none -> every event."""
    value = (pattern or "").strip()
    if not value:
        return subjects.ALL_EVENTS
    if any(ch.isspace() for ch in value) or ".." in value or value.startswith(".") or value.endswith("."):
        raise UsageError(f"subject pattern {value!r} is not valid: tokens separated by single dots, no spaces")
    if value.startswith(subjects.EVT_PREFIX + ".") or value == subjects.EVT_PREFIX:
        return value if value != subjects.EVT_PREFIX else subjects.ALL_EVENTS
    if value.startswith("fleet."):
        raise UsageError(f"{value!r} is not an event subject: events are {subjects.ALL_EVENTS}")
    return f"{subjects.EVT_PREFIX}.{value}"


def trace_id_of(traceparent: str) -> str:
    """The trace id of a W3C traceparent (`00-<trace id>-<span id>-<flags>`), "" when there is none."""
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else ""


def decode_body(data: bytes) -> Any:
    try:
        return msgspec.json.decode(data) if data else None
    except msgspec.DecodeError:
        return data.decode("utf-8", "replace")


async def iterate_events(
    nc: Client, subject: str, *, since: datetime | None = None, follow: bool = False
) -> AsyncIterator[EventRecord]:
    """Yield events oldest first; without `follow`, stop once every stream read has nothing pending."""
    streams = [spec.name for spec in event_streams_for(subject)] or [FLEET_EVENTS.name]
    readers = [_read_stream(nc, name, subject, since, follow) for name in streams]
    merged = _merged(readers)
    try:
        async for record in merged:
            yield record
    finally:
        await merged.aclose()  # first: it may be waiting on a reader
        for reader in readers:
            await reader.aclose()


async def _ordered(
    js: JetStreamContext,
    subject: str,
    stream: str,
    config: ConsumerConfig,
    callback: Callable[[Msg], Awaitable[None]] | None = None,
) -> JetStreamContext.PushSubscription:
    """An ordered ephemeral consumer on `stream` (into `callback` when given), the server's refusals as ClientErrors."""
    try:
        if callback is None:
            return await js.subscribe(subject, stream=stream, config=config, ordered_consumer=True)
        return await js.subscribe(subject, stream=stream, config=config, ordered_consumer=True, cb=callback)
    except nats.js.errors.NotFoundError:
        raise ClientError(
            ErrorCode.NOT_FOUND,
            f"stream {stream} does not exist on this server yet: the services create it when they start "
            "(`flotilla up`)",
        ) from None
    except nats.js.errors.APIError as exc:
        raise ClientError(ErrorCode.INVALID_FIELD, f"cannot read {subject} from {stream}: {exc}") from None
    except nats.errors.NoRespondersError:
        raise ClientError(ErrorCode.UNAVAILABLE, "JetStream is not enabled on this NATS server") from None


async def _read_stream(
    nc: Client, stream: str, subject: str, since: datetime | None, follow: bool
) -> AsyncGenerator[EventRecord | None]:
    """One stream's events; with `follow`, None once when caught up (then whatever comes next)."""
    js = nc.jetstream()
    config = ConsumerConfig(
        description="flotilla events (CLI, ephemeral)",
        deliver_policy=DeliverPolicy.BY_START_TIME if since else DeliverPolicy.ALL,
        opt_start_time=since,
        inactive_threshold=30.0,
    )
    sub = await _ordered(js, subject, stream, config)
    try:
        # A push consumer delivers at once: what it already sent counts as well as what it has left.
        info = await sub.consumer_info()
        caught_up = not info.num_pending and not (info.delivered and info.delivered.consumer_seq)
        if caught_up:
            if not follow:
                return
            yield None
        while True:
            try:
                msg = await sub.next_msg(timeout=POLL_S)
            except nats.errors.TimeoutError:
                continue
            meta = msg.metadata
            headers = msg.headers or {}
            yield EventRecord(
                subject=msg.subject,
                seq=meta.sequence.stream,
                time=meta.timestamp,
                schema=headers.get(H_SCHEMA, ""),
                msg_id=headers.get(H_MSG_ID, ""),
                data=decode_body(msg.data),
                stream=stream,
                actor=headers.get(H_ACTOR, ""),
                trace_id=trace_id_of(headers.get(H_TRACEPARENT, "")),
            )
            if meta.num_pending == 0 and not caught_up:
                if not follow:
                    return
                caught_up = True
                yield None
    finally:
        try:
            await sub.unsubscribe()
        except nats.errors.Error:
            pass


async def subscribe_new(
    nc: Client, subject: str, callback: Callable[[Msg], Awaitable[None]]
) -> list[JetStreamContext.PushSubscription]:
    """Call `callback` with every event on `subject` from now on (ordered ephemeral consumers into this client's
    inbox, one per stream the subject falls in: what a viewer's grant allows, unlike a plain subscription)."""
    config = ConsumerConfig(
        description="flotilla watch (CLI, ephemeral)", deliver_policy=DeliverPolicy.NEW, inactive_threshold=30.0
    )
    js = nc.jetstream()
    subscriptions = []
    for name in [spec.name for spec in event_streams_for(subject)] or [FLEET_EVENTS.name]:
        subscriptions.append(await _ordered(js, subject, name, config, callback))
    return subscriptions


_END = object()


async def _next(reader: AsyncIterator[EventRecord | None]) -> object:
    try:
        return await anext(reader)
    except StopAsyncIteration:
        return _END


async def _merged(readers: list[AsyncGenerator[EventRecord | None]]) -> AsyncGenerator[EventRecord]:
    """Streams merged by time (one stream: its events as they come). While replaying, the oldest head of all,
    each stream still replaying having its head read first; once every stream is caught up, events as they come."""
    count = len(readers)
    heads: list[EventRecord | None] = [None] * count
    live, done = [False] * count, [False] * count
    waiting: dict[int, asyncio.Task[object]] = {}

    def take(i: int, item: object) -> None:
        if item is _END:
            done[i] = True
        elif isinstance(item, EventRecord):
            heads[i] = item
        else:
            live[i] = True

    try:
        while True:
            for i, task in list(waiting.items()):
                if task.done():
                    del waiting[i]
                    take(i, task.result())
            for i in range(count):
                while not (done[i] or live[i] or heads[i] is not None):
                    take(i, await _next(readers[i]))
            ready = [i for i in range(count) if heads[i] is not None]
            if ready:
                first = min(ready, key=lambda i: heads[i].time)  # type: ignore[union-attr]
                record, heads[first] = heads[first], None
                assert record is not None
                yield record
                continue
            if all(done):
                return
            for i in range(count):
                if not done[i] and i not in waiting:
                    waiting[i] = asyncio.ensure_future(_next(readers[i]))
            await asyncio.wait(waiting.values(), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waiting.values():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
