"""Reading FLEET_EVENTS with an ordered, ephemeral consumer: replay from a time, then follow or stop."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js.api import ConsumerConfig, DeliverPolicy

from flotilla_client.errors import ClientError, UsageError
from flotilla_contracts import subjects
from flotilla_contracts.envelope import H_MSG_ID, H_SCHEMA
from flotilla_contracts.errors import ErrorCode
from flotilla_contracts.streams import FLEET_EVENTS

POLL_S = 1.0


class EventRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One stored event: where and when, its schema and id headers, and its decoded JSON body."""

    subject: str
    seq: int
    time: datetime
    schema: str = ""
    msg_id: str = ""
    data: Any = None


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
        raise UsageError(f"{value!r} is not an event subject: FLEET_EVENTS holds {subjects.ALL_EVENTS}")
    return f"{subjects.EVT_PREFIX}.{value}"


def decode_body(data: bytes) -> Any:
    try:
        return msgspec.json.decode(data) if data else None
    except msgspec.DecodeError:
        return data.decode("utf-8", "replace")


async def iterate_events(
    nc: Client, subject: str, *, since: datetime | None = None, follow: bool = False
) -> AsyncIterator[EventRecord]:
    """Yield events oldest first; without `follow`, stop once the consumer has nothing pending."""
    js = nc.jetstream()
    config = ConsumerConfig(
        description="flotilla events (CLI, ephemeral)",
        deliver_policy=DeliverPolicy.BY_START_TIME if since else DeliverPolicy.ALL,
        opt_start_time=since,
        inactive_threshold=30.0,
    )
    try:
        sub = await js.subscribe(subject, stream=FLEET_EVENTS.name, config=config, ordered_consumer=True)
    except nats.js.errors.NotFoundError:
        raise ClientError(
            ErrorCode.NOT_FOUND,
            f"stream {FLEET_EVENTS.name} does not exist on this server yet: the services create it when they start "
            "(`flotilla up`)",
        ) from None
    except nats.js.errors.APIError as exc:
        raise ClientError(ErrorCode.INVALID_FIELD, f"cannot read {subject} from {FLEET_EVENTS.name}: {exc}") from None
    except nats.errors.NoRespondersError:
        raise ClientError(ErrorCode.UNAVAILABLE, "JetStream is not enabled on this NATS server") from None
    try:
        if not follow:
            # A push consumer delivers at once: what it already sent counts as well as what it has left.
            info = await sub.consumer_info()
            if not info.num_pending and not (info.delivered and info.delivered.consumer_seq):
                return
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
            )
            if not follow and meta.num_pending == 0:
                return
    finally:
        try:
            await sub.unsubscribe()
        except nats.errors.Error:
            pass
