"""Dead letters: a message a service gave up on, with the reason, so nothing is dropped silently."""

from __future__ import annotations

from typing import Annotated

import msgspec

from flotilla_contracts.envelope import Message
from flotilla_contracts.errors import ErrorCode
from flotilla_contracts.ids import ClusterIdField, Token
from flotilla_contracts.v1.common import ShortText, Text, Timestamp

MAX_EXCERPT_CHARS = 4096  # base64 characters, i.e. the first 3 KiB of the payload


class DeadLettered(Message, frozen=True, kw_only=True):
    """A message was terminated after `attempts` tries; what it was, where it came from, and why."""

    SCHEMA = "deadletter.DeadLettered"

    service: Token
    instance_id: ShortText = ""
    original_subject: Annotated[str, msgspec.Meta(max_length=1024)]
    reason: ErrorCode
    message: Text
    original_msg_id: Annotated[str, msgspec.Meta(max_length=256)] = ""
    original_schema: Annotated[str, msgspec.Meta(max_length=256)] = ""
    original_headers: Annotated[
        dict[Annotated[str, msgspec.Meta(max_length=256)], Annotated[str, msgspec.Meta(max_length=4096)]],
        msgspec.Meta(max_length=64),
    ] = {}
    payload_excerpt_b64: Annotated[
        str,
        msgspec.Meta(
            max_length=MAX_EXCERPT_CHARS,
            pattern=r"^[A-Za-z0-9+/]*={0,2}$",
            description="Base64 of the payload's first bytes",
        ),
    ] = ""
    payload_size: Annotated[int, msgspec.Meta(ge=0)] = 0
    truncated: bool = False
    attempts: Annotated[int, msgspec.Meta(ge=1)] = 1
    stream: ShortText = ""
    stream_seq: Annotated[int, msgspec.Meta(ge=0)] | None = None
    consumer: ShortText = ""
    occurred_at: Timestamp


class AgentDeadLettered(DeadLettered, frozen=True, kw_only=True):
    """A cluster's agent gave up on one of that cluster's messages. Its own subject names the cluster, so
    the bus lets an agent record dead letters for its own cluster only (flotilla_contracts.permissions)."""

    SCHEMA = "deadletter.AgentDeadLettered"

    cluster_id: ClusterIdField
