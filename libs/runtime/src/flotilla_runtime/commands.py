"""Command endpoints: `fleet.v1.cmd.<service>.<verb>` handlers that decode, call the domain, reply, count."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from faststream.nats import NatsBroker, NatsMessage, NatsResponse
from nats.aio.msg import Msg

from flotilla_contracts import subjects
from flotilla_contracts.envelope import H_MSG_ID, H_REPLY_BY, ErrorBody, Message, schema_id
from flotilla_contracts.errors import ErrorCode
from flotilla_contracts.permissions import ADMIN_USER, AGENT_COMMANDS
from flotilla_contracts.subjects import Service
from flotilla_runtime import actor, codec, telemetry
from flotilla_runtime.errors import RequestError, TemporaryError, storage_error
from flotilla_runtime.logs import BoundLogger, get_logger
from flotilla_runtime.replyby import lateness

Req = TypeVar("Req", bound=Message)
Rep = TypeVar("Rep", bound=Message)

log = logging.getLogger(__name__)
EXPIRED_LOG_EVERY_S = 60.0


@dataclass
class CommandContext:
    """What a handler knows about the message besides its body."""

    subject: str
    headers: Mapping[str, str]
    msg_id: str
    log: BoundLogger
    actor: str = ""  # who sent it (subjects.command_by), `admin` for the plain form, "" for a member's command


Handler = Callable[[Req, CommandContext], Awaitable[Rep]]


@dataclass
class EndpointStats:
    """Per-endpoint counters, reported through `$SRV.STATS`."""

    num_requests: int = 0
    num_errors: int = 0
    last_error: str = ""
    processing_time_ns: int = 0
    num_expired: int = 0  # requests reached after their sender stopped waiting: dropped unanswered (replyby)
    expired_logged_at: float = 0.0


@dataclass
class Endpoint(Generic[Req, Rep]):
    verb: str
    subject: str
    queue_group: str
    request: type[Req]
    reply: type[Rep]
    handler: Handler[Req, Rep]
    stats: EndpointStats = field(default_factory=EndpointStats)


class CommandRouter:
    """Collects a service's commands; `install` turns each into a queue-grouped FastStream subscriber."""

    def __init__(self, service: Service, *, max_message_bytes: int, max_in_flight: int = 256) -> None:
        self.service = service
        self.max_message_bytes = max_message_bytes
        # Commands of one endpoint handled at once; handlers waiting on the database overlap (and their
        # transactions group-commit) instead of queueing behind each other.
        self.max_in_flight = max_in_flight
        self.endpoints: list[Endpoint[Any, Any]] = []

    def command(
        self, verb: str, request: type[Req], reply: type[Rep]
    ) -> Callable[[Handler[Req, Rep]], Handler[Req, Rep]]:
        """Register `handler(request, ctx) -> reply` for `fleet.v1.cmd.<service>.<verb>`."""

        def register(handler: Handler[Req, Rep]) -> Handler[Req, Rep]:
            self.add(verb, request, reply, handler)
            return handler

        return register

    def add(self, verb: str, request: type[Req], reply: type[Rep], handler: Handler[Req, Rep]) -> None:
        subject = subjects.command(self.service, verb)
        if any(ep.subject == subject for ep in self.endpoints):
            raise ValueError(f"command {subject} registered twice")
        self.endpoints.append(Endpoint(verb, subject, subjects.queue_group(self.service), request, reply, handler))

    def schemas(self) -> list[str]:
        """Schema ids this service serves (requests and replies)."""
        found = {schema_id(ep.request) for ep in self.endpoints} | {schema_id(ep.reply) for ep in self.endpoints}
        return sorted(found)

    async def dispatch(
        self, endpoint: Endpoint[Any, Any], data: bytes, headers: Mapping[str, str], subject: str = ""
    ) -> tuple[bytes, dict[str, str]]:
        """Decode, call, encode: every failure becomes an error reply; nothing escapes to the subscriber.

        `subject` is the one the request arrived on: a named user's form (`<command>.by.<user>`) makes them
        the actor of whatever the command causes."""
        started = time.perf_counter_ns()
        stats = endpoint.stats
        stats.num_requests += 1
        msg_id = headers.get(H_MSG_ID, "")
        who = actor_of_request(endpoint.subject, subject or endpoint.subject)
        span_name = f"{self.service.value} {endpoint.verb}"
        with telemetry.consumer_span(span_name, headers, endpoint.subject) as span, actor.acting_as(who):
            if who:
                span.set_attribute("flotilla.actor", who)
            ctx = CommandContext(
                subject=endpoint.subject,
                headers=headers,
                msg_id=msg_id,
                log=get_logger(f"flotilla.{self.service.value}", command=endpoint.verb, actor=who),
                actor=who,
            )
            try:
                request = codec.decode(data, endpoint.request, headers=headers, max_bytes=self.max_message_bytes)
                try:
                    result = await endpoint.handler(request, ctx)
                except Exception as exc:
                    coded = _request_error(exc)
                    if coded is None:
                        raise
                    raise coded from exc
                body, reply_headers = codec.ok_reply(result)
            except RequestError as exc:
                error = exc.to_body()
                stats.num_errors += 1
                stats.last_error = f"{error.code}: {error.message}"
                span.set_attribute("flotilla.error_code", str(error.code))
                ctx.log.info("command refused: %s", error.message, extra={"code": str(error.code)})
                body, reply_headers = codec.error_reply(error)
            except Exception as exc:
                stats.num_errors += 1
                stats.last_error = f"internal: {type(exc).__name__}"
                span.record_exception(exc)
                ctx.log.exception("command failed unexpectedly")
                body, reply_headers = codec.error_reply(
                    ErrorBody(
                        code=ErrorCode.INTERNAL,
                        message=f"{self.service.value} failed on {endpoint.verb}: {type(exc).__name__}; "
                        "see the service log for the trace id",
                        details={"trace_id": telemetry.current_trace_id()},
                    )
                )
        stats.processing_time_ns += time.perf_counter_ns() - started
        return body, reply_headers

    def install(self, broker: NatsBroker) -> None:
        """Subscribe every endpoint on the broker (before `broker.start()`): its plain subject and the named
        users' form (`<subject>.by.*`)."""
        for endpoint in self.endpoints:
            self._subscribe(broker, endpoint, endpoint.subject)
            if endpoint.subject not in AGENT_COMMANDS:  # members' commands: no person sends them
                self._subscribe(broker, endpoint, f"{endpoint.subject}.{subjects.BY}.*")

    def _subscribe(self, broker: NatsBroker, endpoint: Endpoint[Any, Any], subject: str) -> None:
        async def unless_expired(raw: Msg, parse: Callable[[Msg], Awaitable[NatsMessage]]) -> NatsMessage:
            """FastStream parser: a request past its sender's reply-by time loses its reply subject (nothing
            is published for it) and is marked so `on_message` drops it."""
            message = await parse(raw)
            late_s = lateness(raw.headers, time.time())
            if late_s > 0.0 and raw.reply:
                self._expired(endpoint, raw, late_s)
                message.reply_to = raw.reply = ""
            return message

        async def on_message(raw: Msg) -> NatsResponse:
            if not raw.reply and raw.headers and H_REPLY_BY in raw.headers:  # dropped by unless_expired
                return NatsResponse(b"")
            body, headers = await self.dispatch(endpoint, raw.data, raw.headers or {}, raw.subject)
            return NatsResponse(body, headers=headers)

        broker.subscriber(
            subject,
            queue=endpoint.queue_group,
            title=subject,
            max_workers=self.max_in_flight,
            parser=unless_expired,
            decoder=_raw_message,
        )(on_message)

    def _expired(self, endpoint: Endpoint[Any, Any], raw: Msg, late_s: float) -> None:
        stats = endpoint.stats
        stats.num_expired += 1
        now = time.monotonic()
        if now - stats.expired_logged_at >= EXPIRED_LOG_EVERY_S:
            stats.expired_logged_at = now
            log.warning(
                "%s: dropped a request %.1fs past the time its sender stopped waiting (%d so far; this service is "
                "behind, or the sender's clock is behind ours); the sender retries as it does on a timeout",
                endpoint.subject, late_s, stats.num_expired, extra={"subject": raw.subject},
            )  # fmt: skip


def actor_of_request(endpoint_subject: str, subject: str) -> str:
    """Who a command came from, by the subject the bus let them publish on: a named user's form names them,
    the plain form is the built-in admin's (services send people's commands only for them), and a member's
    command (join, inventory, heartbeat config) is no person's."""
    named = subjects.actor_of(subject) if subject != endpoint_subject else ""
    if named:
        return named
    return "" if endpoint_subject in AGENT_COMMANDS else ADMIN_USER


def _request_error(exc: Exception) -> RequestError | None:
    """The coded answer to what a handler raised, or None for a bug (answered `internal`).

    Storage trouble (disk full, database busy) is `unavailable` with what happens next; a number the
    request carried that overflowed later (a duration too long for a date, an int too large for SQLite)
    is `invalid_field`, never `internal`.
    """
    if isinstance(exc, RequestError):
        return None
    temporary = exc if isinstance(exc, TemporaryError) else storage_error(exc, "the service's state")
    if temporary is not None:
        return RequestError(ErrorCode.UNAVAILABLE, str(temporary), retry_after_s=temporary.delay_s)
    if isinstance(exc, OverflowError | ValueError):
        log.warning("a request value was out of range for the handler", exc_info=exc)
        return RequestError(ErrorCode.INVALID_FIELD, f"a value in the request is out of range: {exc}")
    return None


async def _raw_message(message: NatsMessage) -> Msg:
    """FastStream decoder that skips body decoding: handlers get the nats-py message as it arrived."""
    raw: Msg = message.raw_message
    return raw
