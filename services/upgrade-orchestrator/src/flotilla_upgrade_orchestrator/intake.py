"""Batched durable consumers of the event streams: step reports, health and inventory, many events per commit.

Same rules as the runtime's EventConsumer (commit then ack, each event id once, dead-letter what cannot
be decoded), but a fetched batch is handled in one `Store.run` work: each event inside its own savepoint
with the engine's changes flushed, so a failing event is rolled back alone, the engine reloads, and the
events before it still commit. This is what carries hundreds of node steps a second. Step reports come from
FLEET_REPORTS (what members publish), the rest from FLEET_EVENTS: a consumer reads one stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from flotilla_contracts import catalogue
from flotilla_contracts.envelope import H_MSG_ID, H_SCHEMA, Message, SchemaIdError, parse_schema_id
from flotilla_contracts.errors import ErrorCode
from flotilla_contracts.streams import event_stream_of, service_consumer
from flotilla_contracts.subjects import Service
from flotilla_contracts.v1.deadletter import DeadLettered
from flotilla_runtime.consumers import pull
from flotilla_runtime.deadletters import dead_letter
from flotilla_runtime.errors import TemporaryError
from flotilla_runtime.store import SyncTx
from flotilla_upgrade_orchestrator.engine import Engine

log = logging.getLogger(__name__)
SyncHandler = Callable[[Any, str, SyncTx, datetime], None]  # (event, its subject, tx, now)
Runner = Callable[[Callable[[SyncTx], Any]], Awaitable[Any]]
_SERVICE = Service.UPGRADE_ORCHESTRATOR


@dataclass
class IntakeStats:
    handled: int = 0
    duplicates: int = 0
    ignored: int = 0
    dead_lettered: int = 0
    retried: int = 0


@dataclass
class Intake:
    """One durable pull consumer of the event stream its filters fall in, whose batches are applied in one
    transaction."""

    purpose: str
    filter_subjects: list[str]
    handlers: dict[type[Message], SyncHandler]
    engine: Engine
    run_work: Runner
    instance_id: str = ""
    batch: int = 512
    fetch_timeout_s: float = 0.5
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    stats: IntakeStats = field(default_factory=IntakeStats)
    caught_up: asyncio.Event = field(default_factory=asyncio.Event)
    _stopping: bool = False

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
            max_deliver=-1,
            filter_subjects=self.filter_subjects,
            max_ack_pending=self.batch * 4,
        )

    def stop(self) -> None:
        self._stopping = True

    async def run(self, js: JetStreamContext) -> None:
        sub = await self._subscribe(js)
        try:
            while not self._stopping:
                messages, idle = await pull(sub, self.batch, self.fetch_timeout_s)
                if messages:
                    await self.handle_batch(messages)
                if idle or 0 < len(messages) < self.batch:
                    self.caught_up.set()
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _subscribe(self, js: JetStreamContext) -> Any:
        for attempt in range(60):
            try:
                return await js.pull_subscribe(
                    subject="", durable=self.durable, stream=self.stream, config=self.config()
                )
            except (nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError) as exc:
                log.warning("cannot create consumer %s yet (%s); retrying", self.durable, exc)
                await asyncio.sleep(min(0.2 * (attempt + 1), 2.0))
        raise TemporaryError(f"JetStream did not let us create consumer {self.durable}")

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

    async def handle_batch(self, messages: list[Msg]) -> None:
        """Apply a batch in one work, then ack what committed and nak what did not."""
        items: list[tuple[Msg, str, type[Message] | None, Any]] = []
        for msg in messages:
            decoded = self._decode(msg)
            msg_id = (msg.headers or {}).get(H_MSG_ID, "")
            if decoded is None:
                items.append((msg, msg_id, None, None))
            else:
                items.append((msg, msg_id, decoded[0], decoded[1]))
        now = self.clock()

        def work(tx: SyncTx) -> list[str]:
            outcomes: list[str] = []
            for msg, msg_id, kind, event in items:
                if kind is None:
                    if event is None:
                        outcomes.append("ignored")
                    else:
                        self._dead_letter(tx, msg, str(event))
                        outcomes.append("dead")
                    continue
                if msg_id and tx.seen(msg_id):
                    outcomes.append("duplicate")
                    continue
                tx.execute("SAVEPOINT intake_event")
                try:
                    self.handlers[kind](event, msg.subject, tx, now)
                    self.engine.flush(tx)
                except Exception:
                    tx.execute("ROLLBACK TO intake_event")
                    tx.execute("RELEASE intake_event")
                    self.engine.discard()
                    log.exception("event %s failed; it will be redelivered", msg.subject)
                    outcomes += ["retry"] * (len(items) - len(outcomes))
                    return outcomes
                if msg_id:
                    tx.mark_processed(msg_id)
                tx.execute("RELEASE intake_event")
                outcomes.append("handled")
            return outcomes

        try:
            outcomes = await self.run_work(work)
        except Exception as exc:
            log.warning("a batch of %d events did not commit (%s); redelivering", len(items), exc)
            for msg in messages:
                with contextlib.suppress(Exception):
                    await msg.nak(delay=1.0)
            return
        for msg, outcome in zip(messages, outcomes, strict=True):
            if outcome == "retry":
                self.stats.retried += 1
                await msg.nak(delay=1.0)
                continue
            if outcome == "dead":
                self.stats.dead_lettered += 1
                await msg.term()
                continue
            self.stats.handled += outcome == "handled"
            self.stats.duplicates += outcome == "duplicate"
            self.stats.ignored += outcome == "ignored"
            await msg.ack()

    def _dead_letter(self, tx: SyncTx, msg: Msg, reason: str) -> None:
        meta = msg.metadata
        event = dead_letter(
            service=_SERVICE.value,
            instance_id=self.instance_id,
            subject=msg.subject,
            headers=msg.headers,
            payload=msg.data,
            reason=ErrorCode.INVALID_FIELD if "decode" in reason else ErrorCode.WRONG_SCHEMA,
            message=reason,
            attempts=meta.num_delivered,
            stream=meta.stream,
            stream_seq=meta.sequence.stream,
            consumer=self.durable,
        )
        log.error("dead-lettering %s: %s", msg.subject, reason)
        tx.emit(catalogue.subject_for(DeadLettered, service=_SERVICE.value), event)
