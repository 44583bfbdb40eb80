"""Durable JetStream consumers of the event streams: decode by schema, commit, then ack; dead-letter the rest.

A handler receives the typed event and an open transaction. The consumer skips ids already processed,
marks the id processed in the same transaction as the handler's effects, commits, and only then acks
(DESIGN: commit before ack). A temporary error is retried with back-off (nak with delay); a permanent
one, or a message that cannot be decoded, is terminated and recorded as a `DeadLettered` event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from flotilla_contracts import catalogue, subjects
from flotilla_contracts.envelope import H_MSG_ID, H_SCHEMA, Message, SchemaIdError, parse_schema_id
from flotilla_contracts.errors import ErrorCode
from flotilla_contracts.streams import event_stream_of
from flotilla_runtime import codec, telemetry
from flotilla_runtime.deadletters import dead_letter_message
from flotilla_runtime.errors import PermanentError, RequestError, TemporaryError
from flotilla_runtime.store import Store, Tx

log = logging.getLogger(__name__)

EventHandler = Callable[[Any, Tx, "EventMeta"], Awaitable[None]]


class Pulled(NamedTuple):
    """One pull: the messages, and whether the consumer had nothing for us (caught up)."""

    messages: list[Msg]
    idle: bool


async def pull(sub: Any, batch: int, timeout_s: float, pause_s: float = 0.5) -> Pulled:
    """Fetch up to `batch` messages; every pull loop (services, intake, node agents) goes through here.

    An idle consumer is `idle`. A bus that is reconnecting, or a JetStream that does not answer yet (503 no
    responders: a restarted nats-server still loading its streams), is waited out for `pause_s` and gives
    nothing: the caller pulls again. Anything else (the consumer deleted) is the caller's to handle.
    """
    try:
        return Pulled(await sub.fetch(batch, timeout=timeout_s), False)
    except (nats.errors.TimeoutError, TimeoutError):
        return Pulled([], True)
    except (
        nats.errors.ConnectionClosedError,
        nats.errors.ConnectionReconnectingError,
        nats.errors.NoRespondersError,
        nats.js.errors.ServiceUnavailableError,
    ):
        await asyncio.sleep(pause_s)
        return Pulled([], False)


@dataclass(frozen=True)
class EventMeta:
    subject: str
    msg_id: str
    stream_seq: int
    headers: Mapping[str, str]


@dataclass
class ConsumerStats:
    handled: int = 0
    duplicates: int = 0
    retried: int = 0
    dead_lettered: int = 0
    ignored: int = 0


@dataclass
class EventConsumer:
    """One durable pull consumer; `handlers` maps event types to handlers, other schemas are acked and ignored.

    It reads the one event stream its filters fall in (FLEET_EVENTS, or FLEET_REPORTS for what members report).
    """

    service: subjects.Service
    instance_id: str
    durable: str
    filter_subjects: list[str]
    handlers: dict[type[Message], EventHandler]
    store: Store
    batch: int = 256
    max_deliver: int = 10
    ack_wait_s: float = 30.0
    fetch_timeout_s: float = 0.5
    stats: ConsumerStats = field(default_factory=ConsumerStats)
    caught_up: asyncio.Event = field(default_factory=asyncio.Event)
    _decoders: dict[str, tuple[type[Message], msgspec.json.Decoder[Any]]] = field(default_factory=dict)
    _stopping: bool = False

    def __post_init__(self) -> None:
        self.stream = event_stream_of(self.filter_subjects).name
        known = catalogue.by_schema()
        for message_type in self.handlers:
            schema = f"{message_type.SCHEMA}/v{message_type.VERSION}"
            if schema not in known:
                raise ValueError(f"{schema} is not in the contracts catalogue")
            self._decoders[schema] = (message_type, msgspec.json.Decoder(message_type))

    def config(self) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=self.durable,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait_s,
            max_deliver=self.max_deliver,
            filter_subjects=self.filter_subjects,
            max_ack_pending=max(1000, self.batch * 4),
        )

    def stop(self) -> None:
        """Finish the batch in hand, then return from `run` (no pull request is left in flight)."""
        self._stopping = True

    async def run(self, js: JetStreamContext) -> None:
        """Fetch and handle batches until `stop()`."""
        self._stopping = False
        sub = await self._subscribe(js)
        try:
            await self._loop(sub)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _loop(self, sub: Any) -> None:
        while not self._stopping:
            messages, idle = await pull(sub, self.batch, self.fetch_timeout_s)
            for msg in messages:
                await self.handle(msg)
            if idle or 0 < len(messages) < self.batch:
                self.caught_up.set()

    async def _subscribe(self, js: JetStreamContext) -> Any:
        for attempt in range(30):
            try:
                return await js.pull_subscribe(
                    subject="", durable=self.durable, stream=self.stream, config=self.config()
                )
            except (nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError) as exc:
                log.warning("cannot create consumer %s yet (%s); retrying", self.durable, exc)
                await asyncio.sleep(min(0.2 * (attempt + 1), 2.0))
        raise TemporaryError(f"JetStream did not let us create consumer {self.durable}")

    async def handle(self, msg: Msg) -> None:
        """Process one message to a final ack, nak or term; never raises."""
        headers = msg.headers or {}
        meta = msg.metadata
        event_meta = EventMeta(msg.subject, headers.get(H_MSG_ID, ""), meta.sequence.stream, headers)
        schema = headers.get(H_SCHEMA, "")
        decoder = self._decoders.get(schema)
        if decoder is None:
            await self._unknown_schema(msg, schema)
            return
        message_type, json_decoder = decoder
        try:
            codec.check_depth(msg.data)
            event = json_decoder.decode(msg.data)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            await self._give_up(msg, ErrorCode.INVALID_FIELD, f"{schema} does not decode: {exc}")
            return
        except (RequestError, RecursionError):
            await self._give_up(msg, ErrorCode.MALFORMED, f"{schema}: {codec.too_deep().message}")
            return
        with telemetry.consumer_span(f"{self.service.value} handle {message_type.SCHEMA}", headers, msg.subject):
            try:
                async with self.store.transaction() as tx:
                    if event_meta.msg_id and await tx.seen(event_meta.msg_id):
                        self.stats.duplicates += 1
                    else:
                        await self.handlers[message_type](event, tx, event_meta)
                        if event_meta.msg_id:
                            await tx.mark_processed(event_meta.msg_id)
                        self.stats.handled += 1
            except TemporaryError as exc:
                if meta.num_delivered >= self.max_deliver - 1:  # before the last delivery: never lose it silently
                    await self._give_up(
                        msg, ErrorCode.UNAVAILABLE, f"still failing after {meta.num_delivered} tries: {exc}"
                    )
                    return
                self.stats.retried += 1
                delay = exc.delay_s * min(2 ** (meta.num_delivered - 1), 30)
                log.warning("event %s: %s; retrying in %.1fs", msg.subject, exc, delay)
                await msg.nak(delay=delay)
                return
            except PermanentError as exc:
                await self._give_up(msg, exc.code, str(exc))
                return
            except Exception as exc:  # a bug: retry a few times, then dead-letter rather than block the stream
                if meta.num_delivered >= self.max_deliver - 1:
                    await self._give_up(msg, ErrorCode.INTERNAL, f"handler failed: {type(exc).__name__}: {exc}")
                else:
                    log.exception("event %s failed (delivery %d)", msg.subject, meta.num_delivered)
                    await msg.nak(delay=min(0.5 * 2**meta.num_delivered, 30.0))
                return
        await msg.ack()

    async def _unknown_schema(self, msg: Msg, schema: str) -> None:
        """Another service's event we do not read: ack and move on. A schema we should read but cannot: dead-letter."""
        try:
            name, version = parse_schema_id(schema)
        except SchemaIdError:
            await self._give_up(msg, ErrorCode.WRONG_SCHEMA, f"missing or malformed Flotilla-Schema header {schema!r}")
            return
        for message_type in self.handlers:
            if name == message_type.SCHEMA and version != message_type.VERSION:
                await self._give_up(
                    msg,
                    ErrorCode.UNSUPPORTED_VERSION,
                    f"{schema} is not read here; this consumer reads v{message_type.VERSION}",
                )
                return
        self.stats.ignored += 1
        await msg.ack()

    async def _give_up(self, msg: Msg, code: ErrorCode, reason: str) -> None:
        self.stats.dead_lettered += 1
        log.error("dead-lettering %s: %s", msg.subject, reason, extra={"code": str(code)})
        await dead_letter_message(
            self.store, msg, service=self.service.value, instance_id=self.instance_id, consumer=self.durable,
            code=code, reason=reason,
        )  # fmt: skip
