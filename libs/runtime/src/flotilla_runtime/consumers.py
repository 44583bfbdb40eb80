"""Durable JetStream consumers of the event streams: decode by schema, commit, then ack; dead-letter the rest.

A handler receives the typed event and an open transaction. The consumer skips ids already processed,
marks the id processed in the same transaction as the handler's effects, commits, and only then acks
(DESIGN: commit before ack). It runs on the runtime's one pull loop (flotilla_runtime.pullloop): a
temporary error is retried with back-off, a permanent one, a message that cannot be decoded, or one still
failing at its last delivery is terminated and recorded as a `DeadLettered` event.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from flotilla_contracts import catalogue, subjects
from flotilla_contracts.envelope import H_MSG_ID, H_SCHEMA, Message, SchemaIdError, parse_schema_id
from flotilla_contracts.errors import ErrorCode
from flotilla_contracts.streams import event_stream_of
from flotilla_runtime import codec, telemetry
from flotilla_runtime.errors import RequestError
from flotilla_runtime.pullloop import ACK, DeadLetters, LoopStats, Outcome, PullLoop, one_at_a_time
from flotilla_runtime.store import Store, Tx

log = logging.getLogger(__name__)

EventHandler = Callable[[Any, Tx, "EventMeta"], Awaitable[None]]


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
    ignored: int = 0
    loop: LoopStats = field(default_factory=LoopStats)

    @property
    def retried(self) -> int:
        return self.loop.retried

    @property
    def dead_lettered(self) -> int:
        return self.loop.dead_lettered


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
    max_deliver: int = 10  # a message still failing at this delivery is dead-lettered
    ack_wait_s: float = 30.0
    fetch_timeout_s: float = 0.5
    name: str = ""  # stable across restarts (metric labels): the durable without its epoch; default the durable
    stats: ConsumerStats = field(default_factory=ConsumerStats)
    caught_up: asyncio.Event = field(default_factory=asyncio.Event)
    _decoders: dict[str, tuple[type[Message], msgspec.json.Decoder[Any]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.name = self.name or self.durable
        self.stream = event_stream_of(self.filter_subjects).name
        known = catalogue.by_schema()
        for message_type in self.handlers:
            schema = f"{message_type.SCHEMA}/v{message_type.VERSION}"
            if schema not in known:
                raise ValueError(f"{schema} is not in the contracts catalogue")
            self._decoders[schema] = (message_type, msgspec.json.Decoder(message_type))
        self.loop = PullLoop(
            stream=self.stream,
            config=self.config(),
            process=one_at_a_time(self.handle, log),
            dead_letters=DeadLetters(self.store, self.service.value, self.instance_id),
            log=log,
            max_deliveries=self.max_deliver,
            batch=self.batch,
            fetch_timeout_s=self.fetch_timeout_s,
            stats=self.stats.loop,
            caught_up=self.caught_up,
        )

    def config(self) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=self.durable,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait_s,
            max_deliver=-1,  # the loop counts deliveries and dead-letters at max_deliver: nothing is lost silently
            filter_subjects=self.filter_subjects,
            max_ack_pending=max(1000, self.batch * 4),
        )

    def stop(self) -> None:
        """Finish the batch in hand, then return from `run` (no pull request is left in flight)."""
        self.loop.stop()

    async def run(self, js: JetStreamContext) -> None:
        """Fetch and handle batches until `stop()`."""
        await self.loop.run(js)

    async def handle(self, msg: Msg) -> Outcome:
        """What to do with one message; its effects are committed before it says ACK. Raises what the handler
        raised (the loop turns it into a retry or a dead letter)."""
        headers = msg.headers or {}
        meta = msg.metadata
        event_meta = EventMeta(msg.subject, headers.get(H_MSG_ID, ""), meta.sequence.stream, headers)
        schema = headers.get(H_SCHEMA, "")
        decoder = self._decoders.get(schema)
        if decoder is None:
            return self._unknown_schema(schema)
        message_type, json_decoder = decoder
        try:
            codec.check_depth(msg.data)
            event = json_decoder.decode(msg.data)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            return Outcome.dead_letter(ErrorCode.INVALID_FIELD, f"{schema} does not decode: {exc}")
        except (RequestError, RecursionError):
            return Outcome.dead_letter(ErrorCode.MALFORMED, f"{schema}: {codec.too_deep().message}")
        with telemetry.consumer_span(f"{self.service.value} handle {message_type.SCHEMA}", headers, msg.subject):
            async with self.store.transaction() as tx:
                if event_meta.msg_id and await tx.seen(event_meta.msg_id):
                    self.stats.duplicates += 1
                    return ACK
                await self.handlers[message_type](event, tx, event_meta)
                if event_meta.msg_id:
                    await tx.mark_processed(event_meta.msg_id)
            self.stats.handled += 1
        return ACK

    def _unknown_schema(self, schema: str) -> Outcome:
        """Another service's event we do not read: ack and move on. A schema we should read but cannot: dead-letter."""
        try:
            name, version = parse_schema_id(schema)
        except SchemaIdError:
            return Outcome.dead_letter(
                ErrorCode.WRONG_SCHEMA, f"missing or malformed Flotilla-Schema header {schema!r}"
            )
        for message_type in self.handlers:
            if name == message_type.SCHEMA and version != message_type.VERSION:
                return Outcome.dead_letter(
                    ErrorCode.UNSUPPORTED_VERSION,
                    f"{schema} is not read here; this consumer reads v{message_type.VERSION}",
                )
        self.stats.ignored += 1
        return ACK
