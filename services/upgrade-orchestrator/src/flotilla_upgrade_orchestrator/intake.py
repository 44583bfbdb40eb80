"""Batched durable consumers of the event streams: step reports, health and inventory, many events per commit.

Built on the runtime's one pull loop (flotilla_runtime.pullloop) in its batched mode: a fetched batch is
handled in one `Orchestrator.run` work, each event inside its own savepoint with the engine's changes
flushed, so an event that fails is rolled back alone, the engine reloads from the transaction, and the
events before and after it commit together (commit before ack, I8). Each event id is applied once; what
cannot be decoded is dead-lettered at once, and an event that still fails at its `max_deliveries`-th
delivery is dead-lettered with its last error, so one poison event never holds up the ones behind it.
Each event that carries a trace is handled in a span of its own, a child of that trace, so the state changes it
causes carry that trace too.
This is what carries hundreds of node steps a second. Step reports come from FLEET_REPORTS (what members
publish), the rest from FLEET_EVENTS: a consumer reads one stream.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from flotilla_contracts.envelope import H_MSG_ID, H_SCHEMA, Message, SchemaIdError, parse_schema_id
from flotilla_contracts.errors import ErrorCode
from flotilla_contracts.streams import event_stream_of, service_consumer
from flotilla_contracts.subjects import Service
from flotilla_runtime import telemetry
from flotilla_runtime.consumers import ConsumerStats
from flotilla_runtime.pullloop import ACK, DeadLetters, Outcome, PullLoop, in_one_transaction
from flotilla_runtime.store import Store, SyncTx
from flotilla_upgrade_orchestrator.engine import Engine

log = logging.getLogger(__name__)
SyncHandler = Callable[[Any, str, SyncTx, datetime], None]  # (event, its subject, tx, now)
Runner = Callable[[Callable[[SyncTx], Any]], Awaitable[Any]]
_SERVICE = Service.UPGRADE_ORCHESTRATOR


@dataclass
class Intake:
    """One durable pull consumer of the event stream its filters fall in, whose batches are applied in one
    transaction."""

    purpose: str
    filter_subjects: list[str]
    handlers: dict[type[Message], SyncHandler]
    engine: Engine
    run_work: Runner
    store: Store | None = None  # where dead letters are recorded (its outbox)
    instance_id: str = ""
    batch: int = 512
    max_deliveries: int = 10  # an event still failing at this delivery is dead-lettered
    fetch_timeout_s: float = 0.5
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    stats: ConsumerStats = field(default_factory=ConsumerStats)  # the runtime consumers' counters
    caught_up: asyncio.Event = field(default_factory=asyncio.Event)
    _loop: PullLoop | None = None

    def __post_init__(self) -> None:
        self.durable = service_consumer(_SERVICE, self.purpose)
        self.stream = event_stream_of(self.filter_subjects).name
        self._decoders = {f"{t.SCHEMA}/v{t.VERSION}": (t, msgspec.json.Decoder(t)) for t in self.handlers}

    def config(self) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=self.durable,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=60.0,
            max_deliver=-1,  # the pull loop counts deliveries and dead-letters at max_deliveries
            filter_subjects=self.filter_subjects,
            max_ack_pending=self.batch * 4,
        )

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.stop()

    async def run(self, js: JetStreamContext) -> None:
        if self.store is None:
            raise RuntimeError(f"intake {self.purpose} has no store for its dead letters")
        self._loop = PullLoop(
            stream=self.stream,
            config=self.config(),
            process=self.handle_batch,
            dead_letters=DeadLetters(self.store, _SERVICE.value, self.instance_id),
            log=log,
            max_deliveries=self.max_deliveries,
            batch=self.batch,
            fetch_timeout_s=self.fetch_timeout_s,
            stats=self.stats.loop,
            caught_up=self.caught_up,
        )
        await self._loop.run(js)

    async def handle_batch(self, messages: list[Msg]) -> list[Outcome]:
        """Apply a batch in one work, each event in its own savepoint; an Outcome per event."""
        now = self.clock()
        # Decoded here, on the event loop: the database thread is the orchestrator's bottleneck (the benchmark).
        decoded = [self._decode(msg) for msg in messages]
        by_msg = {id(msg): event for msg, event in zip(messages, decoded, strict=True)}
        process = in_one_transaction(
            self.run_work, lambda tx, msg: self._handle(tx, msg, by_msg[id(msg)], now), log, rolled_back=self._reload
        )
        return await process(messages)

    def _handle(
        self,
        tx: SyncTx,
        msg: Msg,
        decoded: tuple[type[Message], Any] | tuple[None, str] | None,
        now: datetime,
    ) -> Outcome:
        if decoded is None:
            self.stats.ignored += 1
            return ACK
        kind, event = decoded
        if kind is None:
            return Outcome.dead_letter(self._failure_code(msg), str(event))
        headers = msg.headers or {}
        msg_id = headers.get(H_MSG_ID, "")
        if msg_id and tx.seen(msg_id):
            self.stats.duplicates += 1
            return ACK
        if "traceparent" in headers:
            # A span per traced event, a child of its trace: what handling it emits (state changes) joins that trace.
            span_name = f"{_SERVICE.value} handle {kind.SCHEMA}"
            with telemetry.consumer_span(span_name, headers, msg.subject), tx.in_current_trace():
                self._apply(kind, event, msg.subject, tx, now)
        else:  # no trace to continue: no span (a root trace of one span per report would only be noise)
            self._apply(kind, event, msg.subject, tx, now)
        if msg_id:
            tx.mark_processed(msg_id)
        self.stats.handled += 1
        return ACK

    def _apply(self, kind: type[Message], event: Any, subject: str, tx: SyncTx, now: datetime) -> None:
        self.handlers[kind](event, subject, tx, now)
        self.engine.flush(tx)

    def _reload(self, tx: SyncTx) -> None:
        """An event was rolled back: forget what it changed in memory and read the state as it now stands."""
        self.engine.discard()
        self.engine.load(tx)

    def _failure_code(self, msg: Msg) -> ErrorCode:
        schema = (msg.headers or {}).get(H_SCHEMA, "")
        if schema in self._decoders:
            return ErrorCode.INVALID_FIELD
        try:
            parse_schema_id(schema)
        except SchemaIdError:
            return ErrorCode.WRONG_SCHEMA
        return ErrorCode.UNSUPPORTED_VERSION

    def _decode(self, msg: Msg) -> tuple[type[Message], Any] | tuple[None, str] | None:
        """(type, event); (None, reason) to dead-letter; None to ignore (another service's event)."""
        headers = msg.headers or {}
        schema = headers.get(H_SCHEMA, "")
        decoder = self._decoders.get(schema)
        if decoder is None:
            try:
                name, version = parse_schema_id(schema)
            except SchemaIdError:
                return None, f"missing or malformed Flotilla-Schema header {schema!r}"
            if any(name == t.SCHEMA and version != t.VERSION for t in self.handlers):
                return None, f"{schema} is not read here"
            return None
        try:
            return decoder[0], decoder[1].decode(msg.data)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
            return None, f"{schema} does not decode: {exc}"
