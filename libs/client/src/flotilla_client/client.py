"""The async Flotilla client: one NATS connection, typed commands, raw publish/request, discovery and events."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TypeVar

import msgspec
import nats
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from opentelemetry.trace import SpanKind

from flotilla_client import users
from flotilla_client.discovery import ServiceRecord, collect_services
from flotilla_client.errors import ClientError
from flotilla_client.events import EventRecord, iterate_events
from flotilla_contracts import subjects
from flotilla_contracts.envelope import H_MSG_ID, H_SCHEMA, H_SENT_AT, Message, schema_id
from flotilla_contracts.errors import ErrorCode
from flotilla_contracts.v1 import scheduler as sched
from flotilla_runtime import codec, logins, telemetry
from flotilla_runtime.natsconn import connect_options, redact
from flotilla_runtime.replyby import reply_by_headers

M = TypeVar("M", bound=Message)

DEFAULT_URL = "nats://127.0.0.1:4222"
log = logging.getLogger(__name__)


@dataclass
class BusErrorLog:
    """Errors the server sends asynchronously: nats-py reports a denied publish only to `error_cb`."""

    errors: list[str] = field(default_factory=list)
    _watches: list[tuple[str, asyncio.Future[str]]] = field(default_factory=list)

    async def callback(self, error: Exception) -> None:
        text = str(error) or type(error).__name__
        self.errors.append(text)
        log.debug("NATS error: %s", text)
        if "permissions violation" in text.lower():
            for subject, denial in self._watches:  # the server quotes the subject (nats-py lower-cases it)
                if f'"{subject.lower()}"' in text.lower() and not denial.done():
                    denial.set_result(text)

    def watch(self, subject: str) -> asyncio.Future[str]:
        """Resolves with the server's error when it denies a publish to `subject` (until `unwatch`)."""
        denial: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._watches.append((subject, denial))
        return denial

    def unwatch(self, denial: asyncio.Future[str]) -> None:
        self._watches = [(s, d) for s, d in self._watches if d is not denial]

    def denied(self) -> list[str]:
        return [text for text in self.errors if "permissions violation" in text.lower()]


@dataclass(frozen=True)
class RawReply:
    """A reply as received: subject, headers and body bytes."""

    subject: str
    headers: dict[str, str]
    data: bytes


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def message_headers(schema: str | None = None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Headers every Flotilla message carries: schema (when known), a unique id, a timestamp, trace context."""
    headers: dict[str, str] = {H_MSG_ID: uuid.uuid4().hex, H_SENT_AT: now_rfc3339()}
    if schema:
        headers[H_SCHEMA] = schema
    headers.update(extra or {})
    telemetry.inject(headers)
    return headers


@contextmanager
def _span(name: str, kind: SpanKind, subject: str) -> Iterator[None]:
    """The client side of a trace; its context goes out in the message's traceparent header."""
    attributes = {"messaging.system": "nats", "messaging.destination.name": subject}
    with telemetry.tracer("flotilla.client").start_as_current_span(name, kind=kind, attributes=attributes):
        yield


def service_of(subject: str) -> str:
    """`fleet.v1.cmd.registration.info` -> `registration`; empty for other subjects."""
    prefix = subjects.CMD_PREFIX + "."
    return subject[len(prefix) :].split(".", 1)[0] if subject.startswith(prefix) else ""


class FlotillaClient:
    """Talks to a Flotilla fleet over NATS only. Use `async with FlotillaClient(url) as client:`."""

    def __init__(self, url: str = DEFAULT_URL, *, name: str = "flotilla-cli", connect_timeout: float = 3.0) -> None:
        self.url = url
        self.name = name
        # A person (the URL logs in as a named user) sends every command in their own name: their grant allows
        # only that form, and the events it causes carry `actor: <them>`.
        self.actor = users.person_in_url(url)
        self.connect_timeout = connect_timeout
        self.bus_errors = BusErrorLog()
        self._nc: Client | None = None

    async def __aenter__(self) -> FlotillaClient:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def nc(self) -> Client:
        if self._nc is None or not self._nc.is_connected:
            raise ClientError(ErrorCode.UNAVAILABLE, f"not connected to NATS at {redact(self.url)}")
        return self._nc

    @property
    def server_version(self) -> str:
        v = self.nc.connected_server_version
        return f"{v.major}.{v.minor}.{v.patch}"

    async def connect(self) -> None:
        """Connect once; a server that does not answer is a clear error naming the URL and what to do."""
        try:
            self._nc = await logins.connect(  # returned once the server answered the login, even late
                self.url,
                name=self.name,
                error_cb=self.bus_errors.callback,
                allow_reconnect=False,
                max_reconnect_attempts=1,  # 0 means "forever" to nats-py; 1 is one retry, then NoServersError
                reconnect_time_wait=0.1,
                connect_timeout=max(1, round(self.connect_timeout)),
                **connect_options(self.url),
            )
        except (OSError, nats.errors.Error, TimeoutError) as exc:
            reason = "; ".join(self.bus_errors.errors[-1:]) or str(exc) or type(exc).__name__
            raise ClientError(
                ErrorCode.UNAVAILABLE,
                f"cannot reach NATS at {redact(self.url)} ({reason}); start a local fleet with `flotilla up`, "
                "or point to a running NATS with --server URL (or FLOTILLA_NATS_URL); on a bus with "
                "authentication the URL carries the user: nats://USER:PASSWORD@host:port",
                {"url": redact(self.url)},
            ) from None

    async def close(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            try:
                await self._nc.close()
            except (nats.errors.Error, OSError):
                pass
        self._nc = None

    async def request(
        self,
        service: subjects.Service | str,
        verb: str,
        message: Message,
        reply_type: type[M],
        timeout: float = 5.0,  # noqa: ASYNC109 - the NATS request's own deadline
    ) -> M:
        """Send a command to `fleet.v1.cmd.<service>.<verb>` and return the typed data of its reply."""
        name = service.value if isinstance(service, subjects.Service) else service
        subject = self.command_subject(name, verb)
        raw = await self.request_raw(
            subject, codec.encode(message), schema_id(type(message)), timeout=timeout, span_name=f"{name} {verb}"
        )
        try:
            reply = codec.decode_reply(raw.data, reply_type)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ClientError(
                ErrorCode.MALFORMED, f"the reply from {name} on {subject} is not a {reply_type.SCHEMA} envelope: {exc}"
            ) from None
        if not reply.ok or reply.data is None:
            if reply.error is None:
                raise ClientError(ErrorCode.INTERNAL, f"{name} answered {subject} with neither data nor an error")
            raise ClientError(reply.error.code, reply.error.message, dict(reply.error.details))
        return reply.data

    async def apply_subscriptions(
        self,
        specs: list[sched.SubscriptionSpec],
        timeout: float = 60.0,  # noqa: ASYNC109 - the NATS request's own deadline
    ) -> list[sched.ApplyResult]:
        """`subscriptions.batch.apply`: at most `sched.MAX_APPLY_BATCH` specs, one result each, in order."""
        request = sched.ApplySubscriptionsRequest(specs=specs)
        reply = await self.request(
            subjects.Service.SCHEDULER, "subscriptions.batch.apply", request, sched.ApplySubscriptionsReply, timeout
        )
        return reply.results

    def command_subject(self, service: str, verb: str) -> str:
        """`fleet.v1.cmd.<service>.<verb>`, in the person's own name when one is logged in."""
        subject = f"{subjects.CMD_PREFIX}.{service}.{verb}"
        return f"{subject}.{subjects.BY}.{self.actor}" if self.actor else subject

    async def request_raw(
        self,
        subject: str,
        payload: bytes,
        schema: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 5.0,  # noqa: ASYNC109 - the NATS request's own deadline
        span_name: str = "",
    ) -> RawReply:
        """A core NATS request with Flotilla headers; no responders and timeouts become ClientErrors."""
        service = service_of(subject)
        who = f"the {service} service" if service else "any service"
        try:
            with _span(span_name or f"request {subject}", SpanKind.CLIENT, subject):
                sent = message_headers(schema, headers)
                msg = await self._request_unless_denied(subject, payload, timeout, sent)
        except nats.errors.NoRespondersError:
            raise ClientError(
                ErrorCode.UNAVAILABLE,
                f"{who} is not running: nobody answers {subject} on {redact(self.url)} "
                "(start the fleet with `flotilla up`)",
                {"subject": subject},
            ) from None
        except (TimeoutError, nats.errors.TimeoutError):
            denied = self.bus_errors.denied()
            why = f"; the server denied it: {denied[-1]}" if denied else ""
            raise ClientError(
                ErrorCode.TIMEOUT,
                f"no reply on {subject} within {timeout:g}s from {who}{why}",
                {"subject": subject, "timeout_s": timeout},
            ) from None
        return RawReply(msg.subject, dict(msg.headers or {}), msg.data)

    async def _request_unless_denied(
        self,
        subject: str,
        payload: bytes,
        timeout: float,  # noqa: ASYNC109 - the NATS request's own deadline
        headers: dict[str, str],
    ) -> Msg:
        """The reply, or a FORBIDDEN error as soon as the server says this user may not publish to `subject`
        (nats-server drops a denied request: without this the caller would wait for the timeout)."""
        denial = self.bus_errors.watch(subject)
        # Past `timeout` this command reports a timeout: a service that reaches it later drops it (replyby), so a
        # command the person was told timed out does not take effect behind their back.
        headers = reply_by_headers(timeout) | headers
        request = asyncio.ensure_future(self.nc.request(subject, payload, timeout=timeout, headers=headers))
        try:
            either: set[asyncio.Future[Any]] = {request, denial}
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.bus_errors.unwatch(denial)
            if not request.done():
                request.cancel()
        if not request.done() or request.cancelled():
            raise ClientError(
                ErrorCode.FORBIDDEN,
                f"the server refused the request to {subject}: {denial.result()}",
                {"subject": subject},
            )
        return request.result()

    async def publish(
        self, subject: str, payload: bytes, schema: str | None = None, *, headers: Mapping[str, str] | None = None
    ) -> str:
        """Publish, flush, and raise when the server denied it; returns the message id."""
        before = len(self.bus_errors.denied())
        try:
            with _span(f"publish {subject}", SpanKind.PRODUCER, subject):
                sent = message_headers(schema, headers)
                await self.nc.publish(subject, payload, headers=sent)
            await self.nc.flush(timeout=5)
        except (TimeoutError, nats.errors.Error) as exc:
            raise ClientError(ErrorCode.UNAVAILABLE, f"could not publish to {subject}: {exc}") from None
        await asyncio.sleep(0.01)  # error_cb runs as its own task: let it report a denial sent before the PONG
        denied = self.bus_errors.denied()[before:]
        if denied:
            raise ClientError(ErrorCode.FORBIDDEN, f"the server refused the publish to {subject}: {denied[-1]}")
        return sent[H_MSG_ID]

    async def discover(
        self,
        timeout: float = 1.0,  # noqa: ASYNC109 - a collection window, not a cancel scope
        expect: int = 0,
    ) -> list[ServiceRecord]:
        """Every service instance answering `$SRV.PING`, with its `$SRV.STATS`; sorted by name then id."""
        return await collect_services(self.nc, timeout=timeout, expect=expect)

    def events(
        self, subject: str = subjects.ALL_EVENTS, *, since: datetime | None = None, follow: bool = False
    ) -> AsyncIterator[EventRecord]:
        """Events matching `subject` (FLEET_EVENTS and FLEET_REPORTS merged by time, or the one stream the subject
        falls in), oldest first; without `follow`, stops when caught up."""
        return iterate_events(self.nc, subject, since=since, follow=follow)
