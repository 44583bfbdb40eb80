"""The catalogue: every subject Flotilla uses and the message types that travel on it.

It is the single source for the committed JSON Schemas and the AsyncAPI document, and for the
runtime's schema look-ups. A new message is added here, or it does not exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from flotilla_contracts import subjects
from flotilla_contracts.envelope import Message, schema_id
from flotilla_contracts.subjects import Service
from flotilla_contracts.v1 import service as v1_service


class Kind(StrEnum):
    COMMAND = "command"  # request/reply on fleet.v1.cmd.<service>.<verb>
    EVENT = "event"  # JetStream FLEET_EVENTS, fleet.v1.evt.<entity>.<id...>.<event>
    HEARTBEAT = "heartbeat"  # core NATS, fleet.v1.hb.<cluster>.<node>
    AGENT_COMMAND = "agent_command"  # JetStream FLEET_AGENT, fleet.v1.agent.<cluster>.<node>.<verb>


@dataclass(frozen=True)
class Operation:
    """One subject pattern ({placeholders} for ids), its message, its reply for commands, and its owner."""

    kind: Kind
    subject: str
    message: type[Message]
    owner: Service | None  # who serves the command or emits the event; None: every service
    summary: str
    reply: type[Message] | None = None


def _cmd(service: Service | None, verb: str) -> str:
    name = "{service}" if service is None else service.value
    return f"{subjects.CMD_PREFIX}.{name}.{verb}"


OPERATIONS: list[Operation] = [
    Operation(
        kind=Kind.COMMAND,
        subject=_cmd(None, "info"),
        message=v1_service.InfoRequest,
        reply=v1_service.InfoReply,
        owner=None,
        summary="Any service: its name, instance, versions, schemas and state path.",
    ),
]


def message_types() -> list[type[Message]]:
    """Every message type in the catalogue, requests, replies and events, once each, sorted by schema."""
    seen: dict[str, type[Message]] = {}
    for op in OPERATIONS:
        for message in (op.message, op.reply):
            if message is not None:
                seen.setdefault(schema_id(message), message)
    return [seen[key] for key in sorted(seen)]


def by_schema() -> dict[str, type[Message]]:
    """Index of message types by their schema id ("<domain>.<Name>/v<N>")."""
    return {schema_id(message): message for message in message_types()}
