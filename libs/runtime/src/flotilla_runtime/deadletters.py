"""Building dead-letter events: what a message was, where it came from, and why it was given up."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from datetime import UTC, datetime

import msgspec
from nats.aio.msg import Msg

from flotilla_contracts import catalogue
from flotilla_contracts.envelope import H_MSG_ID, H_SCHEMA
from flotilla_contracts.errors import ErrorCode
from flotilla_contracts.v1.deadletter import MAX_EXCERPT_CHARS, AgentDeadLettered, DeadLettered
from flotilla_runtime.store import Store

_EXCERPT_BYTES = MAX_EXCERPT_CHARS // 4 * 3


def dead_letter(
    *,
    service: str,
    instance_id: str,
    subject: str,
    headers: Mapping[str, str] | None,
    payload: bytes,
    reason: ErrorCode,
    message: str,
    attempts: int = 1,
    stream: str = "",
    stream_seq: int | None = None,
    consumer: str = "",
) -> DeadLettered:
    """A DeadLettered event for a message that will never be processed."""
    headers = dict(headers or {})
    excerpt = payload[:_EXCERPT_BYTES]
    return DeadLettered(
        service=service,
        instance_id=instance_id[:256],
        original_subject=subject[:1024],
        reason=reason,
        message=message[:4096],
        original_msg_id=headers.get(H_MSG_ID, "")[:256],
        original_schema=headers.get(H_SCHEMA, "")[:256],
        original_headers={key[:256]: value[:4096] for key, value in list(headers.items())[:64]},
        payload_excerpt_b64=base64.b64encode(excerpt).decode(),
        payload_size=len(payload),
        truncated=len(payload) > len(excerpt),
        attempts=max(1, attempts),
        stream=stream,
        stream_seq=stream_seq,
        consumer=consumer,
        occurred_at=datetime.now(UTC),
    )


async def dead_letter_message(
    store: Store,
    msg: Msg,
    *,
    service: str,
    instance_id: str,
    consumer: str,
    code: ErrorCode,
    reason: str,
    cluster_id: str = "",
) -> DeadLettered:
    """Give up on a JetStream message: record it as a DeadLettered event (outbox), then terminate it.

    With `cluster_id` (a cluster's agent) it is an AgentDeadLettered on that cluster's own subject."""
    meta = msg.metadata
    event = dead_letter(
        service=service,
        instance_id=instance_id,
        subject=msg.subject,
        headers=msg.headers,
        payload=msg.data,
        reason=code,
        message=reason,
        attempts=meta.num_delivered,
        stream=meta.stream,
        stream_seq=meta.sequence.stream,
        consumer=consumer,
    )
    subject = catalogue.subject_for(DeadLettered, service=service)
    if cluster_id:  # a cluster's agent: on that cluster's own subject, the only one the bus lets it publish
        event = AgentDeadLettered(**msgspec.structs.asdict(event), cluster_id=cluster_id)
        subject = catalogue.subject_for(AgentDeadLettered, service=service, cluster_id=cluster_id)
    async with store.transaction() as tx:
        await tx.emit(subject, event)
    await msg.term()
    return event
