"""The parts of every message that are not its payload: schema ids, headers and the reply envelope."""

from __future__ import annotations

from typing import Any, ClassVar, Generic, TypeVar

import msgspec

from flotilla_contracts.errors import ErrorCode

# Headers carried by every Flotilla message.
H_SCHEMA = "Flotilla-Schema"  # "<domain>.<Name>/v<N>", e.g. "upgrade.RolloutStarted/v1"
H_MSG_ID = "Nats-Msg-Id"  # unique id; JetStream de-duplicates on it
H_SENT_AT = "Flotilla-Sent-At"  # RFC 3339 UTC timestamp of the publish
H_TRACEPARENT = "traceparent"  # W3C trace context
H_TRACESTATE = "tracestate"
# On an event a person's command caused: who sent it (a named user, or `admin` for the built-in admin and
# the services), taken from the subject the bus let them publish on (subjects.command_by), never from a body.
H_ACTOR = "Flotilla-Actor"
# On a request: when its sender stops waiting for the answer (Unix time in seconds, the sender's clock). A
# service that reaches it later drops it unanswered (flotilla_runtime.replyby): under overload it would otherwise
# spend itself answering requests nobody waits for, while their senders' retries queue behind them.
H_REPLY_BY = "Flotilla-Reply-By"
# NATS micro (ADR-32) error headers, so standard NATS tools show our errors too.
H_SERVICE_ERROR = "Nats-Service-Error"
H_SERVICE_ERROR_CODE = "Nats-Service-Error-Code"

DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024


class Message(msgspec.Struct, frozen=True, kw_only=True):
    """Base of every payload; a subclass names itself with SCHEMA ("<domain>.<Name>") and VERSION."""

    SCHEMA: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1


M = TypeVar("M", bound=Message)
T = TypeVar("T")


def schema_id(message_type: type[Message]) -> str:
    """The header value for a message type: "<domain>.<Name>/v<N>"."""
    if not message_type.SCHEMA:
        raise TypeError(f"{message_type.__name__} has no SCHEMA")
    return f"{message_type.SCHEMA}/v{message_type.VERSION}"


class SchemaIdError(ValueError):
    """A Flotilla-Schema header that is not of the form "<domain>.<Name>/v<N>"."""


def parse_schema_id(value: str) -> tuple[str, int]:
    """Split "<domain>.<Name>/v<N>" into its name and version number."""
    name, sep, version = value.partition("/v")
    if not sep or not name or not version.isdigit():
        raise SchemaIdError(f"schema {value!r} is not of the form '<domain>.<Name>/v<N>'")
    return name, int(version)


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    """What went wrong: a stable code, a message for people, and details (e.g. the field)."""

    code: ErrorCode
    message: str
    details: dict[str, Any] = {}
    retryable: bool = False


class Reply(msgspec.Struct, Generic[T], frozen=True, kw_only=True):
    """Result envelope of every command: `ok` with `data`, or not `ok` with `error`."""

    ok: bool
    data: T | None = None
    error: ErrorBody | None = None


ERROR_SCHEMA = "flotilla.Error/v1"
