"""The NATS connection: a FastStream broker without per-message logging, bus errors surfaced, streams provisioned."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import nats.errors
import nats.js.errors
from fast_depends.msgspec import MsgSpecSerializer
from faststream.nats import NatsBroker
from faststream.nats.security import NatsSecurity
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from flotilla_contracts.streams import STREAMS, Retention, StreamSpec
from flotilla_runtime.errors import TemporaryError
from flotilla_runtime.lifeline import Lifeline
from flotilla_runtime.natsconn import CA_ENV, connect_options, nats_user, redact, with_user, without_user

__all__ = ["CA_ENV", "connect_options", "nats_user", "redact", "with_user", "without_user"]

log = logging.getLogger(__name__)


@dataclass
class BusErrors:
    """Errors the server sent asynchronously (nats-py does not raise on a denied publish), and the messages
    nats-py dropped because a subscription's pending limits were full (a slow consumer on our side)."""

    last: str = ""
    count: int = 0
    permission_denied: list[str] = field(default_factory=list)
    dropped: int = 0  # messages nats-py dropped for a full subscription (one SlowConsumerError each)
    drop_listeners: list[Callable[[nats.errors.SlowConsumerError], None]] = field(default_factory=list)
    drop_log_every_s: float = 10.0
    _drop_logged_at: float = -1e9

    async def callback(self, error: Exception) -> None:
        if isinstance(error, nats.errors.SlowConsumerError):
            self._dropped(error)  # one per dropped message: counted, told, logged once in a while
            return
        text = str(error) or type(error).__name__
        self.last = text
        self.count += 1
        if "permissions violation" in text.lower():
            self.permission_denied.append(text)
            log.error("the NATS server denied an operation: %s", text)
        elif not isinstance(error, nats.errors.UnexpectedEOF | ConnectionResetError):
            log.warning("NATS connection error: %s", text)

    def _dropped(self, error: nats.errors.SlowConsumerError) -> None:
        self.dropped += 1
        for listener in self.drop_listeners:
            listener(error)
        now = time.monotonic()
        if now - self._drop_logged_at >= self.drop_log_every_s:
            self._drop_logged_at = now
            log.warning(
                "a subscription's pending limits are full: nats-py dropped messages (%d so far, last on %s); "
                "this process is too slow for its subscriptions",
                self.dropped,
                error.subject,
            )


def make_broker(
    nats_url: str,
    client_name: str,
    errors: BusErrors | None = None,
    lifeline: Lifeline | None = None,
    extra: Mapping[str, Any] | None = None,
) -> NatsBroker:
    """A FastStream NATS broker with msgspec serialization and no per-message logging (halves throughput).

    Its connection reconnects forever with back-off; attach `lifeline` to `broker.connection` once connected
    so auth errors (an expired grant) reconnect too instead of closing it (flotilla_runtime.lifeline).
    """
    bus_errors = errors or BusErrors()
    link = lifeline or Lifeline(client_name)
    options = connect_options(nats_url) | dict(extra or {})  # extra: e.g. a node's nkey seed, token, inbox
    # FastStream refuses two authentication options at once, but a node's login needs both its key (to sign
    # the nonce) and a token (its user and cluster credential): nats-py takes them together; see below.
    auth: dict[str, Any] = {name: options.pop(name) for name in ("token", "nkeys_seed_str") if name in options}
    tls = options.pop("tls", None)
    if tls is not None:
        options["security"] = NatsSecurity(ssl_context=tls)  # FastStream takes TLS as a security object
    broker = NatsBroker(
        nats_url,
        name=client_name,
        logger=None,
        serializer=MsgSpecSerializer(),
        reconnect_time_wait=1,
        connect_timeout=5,
        graceful_timeout=10.0,
        # Handlers take the raw message and decode it themselves (codec.decode, typed errors): no
        # dependency injection, which would otherwise cost a thread-pool hop per message.
        apply_types=False,
        **link.options(error_cb=bus_errors.callback),
        **options,
    )
    if auth:
        broker._connection_kwargs.update(auth)  # what NatsBroker hands nats.connect (faststream 0.6)
    return broker


def stream_config(spec: StreamSpec, replicas: int = 1) -> StreamConfig:
    """nats-py configuration for a contract stream definition."""
    return StreamConfig(
        name=spec.name,
        description=spec.description,
        subjects=list(spec.subjects),
        retention=RetentionPolicy.WORK_QUEUE if spec.retention is Retention.WORK_QUEUE else RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        duplicate_window=spec.duplicate_window_s,
        max_age=spec.max_age_s,
        max_msg_size=spec.max_msg_bytes,
        max_consumers=spec.max_consumers,
        max_msgs_per_subject=spec.max_msgs_per_subject,
        max_bytes=spec.max_bytes,
        num_replicas=replicas,
    )


async def ensure_streams(js: JetStreamContext, replicas: int = 1, specs: tuple[StreamSpec, ...] = STREAMS) -> None:
    """Create each stream, or update it when its configuration differs; safe to run from every replica.

    `specs` go in order: a deployment from before FLEET_REPORTS has FLEET_EVENTS on every event subject, and
    nats-server refuses a stream whose subjects overlap another's, so FLEET_EVENTS is narrowed first (the
    messages it already holds stay in it).
    """
    for spec in specs:
        config = stream_config(spec, replicas)
        try:
            try:
                info = await js.stream_info(spec.name)
            except nats.js.errors.NotFoundError:
                try:
                    await js.add_stream(config)
                    log.info("created stream %s", spec.name, extra={"stream": spec.name})
                except nats.js.errors.BadRequestError as exc:
                    await _created_by_another(js, spec, exc)
                continue
            current = info.config
            if (
                sorted(current.subjects or []) != sorted(config.subjects or [])
                or current.duplicate_window != config.duplicate_window
                or current.max_age != config.max_age
                or current.description != config.description
                or (current.max_consumers or 0) < spec.max_consumers
                or (current.max_msgs_per_subject or -1) != spec.max_msgs_per_subject
                or (current.max_bytes or -1) != spec.max_bytes
            ):
                # Keep what operators chose for replicas; change only what the contract defines.
                config.num_replicas = current.num_replicas
                await js.update_stream(config)
                log.info("updated stream %s", spec.name, extra={"stream": spec.name})
        except (TimeoutError, nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
            raise TemporaryError(
                f"JetStream did not answer while provisioning {spec.name} ({type(exc).__name__}); "
                "is JetStream enabled on the server?"
            ) from exc


async def _created_by_another(js: JetStreamContext, spec: StreamSpec, refusal: Exception) -> None:
    """A refused create is fine when another replica created the stream first; anything else (subjects that
    overlap a stream an older version left) is raised, so the service retries instead of running without it."""
    try:
        await js.stream_info(spec.name)
    except nats.js.errors.NotFoundError:
        raise TemporaryError(
            f"nats-server refused to create stream {spec.name} ({refusal}); if another stream holds its subjects "
            "(an older FLEET_EVENTS on fleet.v1.evt.>), a service of this version narrows it on start"
        ) from refusal
