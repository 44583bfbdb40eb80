"""The runtime's own metrics: commands and events handled and failed, handler latency, outbox lag, bus errors."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flotilla_runtime.lifeline import Lifeline, LinkState
from flotilla_runtime.metrics import Family, Histogram, Registry, Sample

if TYPE_CHECKING:
    from flotilla_runtime.bus import BusErrors
    from flotilla_runtime.commands import CommandRouter
    from flotilla_runtime.consumers import ConsumerStats, EventConsumer
    from flotilla_runtime.outbox import OutboxRelay
    from flotilla_runtime.store import Store


def instrument_commands(router: CommandRouter, registry: Registry) -> None:
    """Time every command handler into `flotilla_command_handler_duration_seconds{subject}`.

    Counts of requests and errors come from each endpoint's `EndpointStats` at scrape time (they include bad
    input refused before the handler runs); the histogram times the handler itself.
    """
    histogram = registry.histogram(
        "flotilla_command_handler_duration_seconds",
        "Time spent in command handlers, by command subject.",
        ["subject"],
    )
    for endpoint in router.endpoints:
        endpoint.handler = _timed(endpoint.handler, histogram, {"subject": endpoint.subject})


def instrument_consumers(consumers: Sequence[EventConsumer], registry: Registry) -> None:
    """Time every event handler into `flotilla_event_handler_duration_seconds{consumer,schema}`."""
    histogram = registry.histogram(
        "flotilla_event_handler_duration_seconds",
        "Time spent in event handlers (inside the transaction), by consumer and event schema.",
        ["consumer", "schema"],
    )
    for consumer in consumers:
        for message_type, handler in list(consumer.handlers.items()):
            labels = {"consumer": consumer.name, "schema": f"{message_type.SCHEMA}/v{message_type.VERSION}"}
            consumer.handlers[message_type] = _timed(handler, histogram, labels)


def _timed(handler: Callable[..., Awaitable[Any]], histogram: Histogram, labels: dict[str, str]) -> Any:
    async def timed(*args: Any) -> Any:
        started = time.perf_counter()
        try:
            return await handler(*args)
        finally:
            histogram.observe(time.perf_counter() - started, **labels)

    timed.__wrapped__ = handler  # type: ignore[attr-defined]
    return timed


@dataclass(frozen=True)
class Counted:
    """A pull loop on /metrics: its stable name (the `consumer` label: no epoch, no ids) and its counters."""

    name: str
    stats: ConsumerStats


@dataclass
class RuntimeSources:
    """Where the runtime's figures live; `relay` is read at scrape time because it exists only once connected."""

    service: str
    version: str
    instance_id: str
    router: CommandRouter
    consumers: Sequence[Counted]
    store: Store
    bus_errors: BusErrors
    ready: Callable[[], bool]
    relay: Callable[[], OutboxRelay | None]
    lifeline: Lifeline | None = None
    started_at: float = field(default_factory=time.time)


RUNTIME_METRICS = (
    "flotilla_service_info",
    "flotilla_service_start_time_seconds",
    "flotilla_service_ready",
    "flotilla_commands_total",
    "flotilla_command_errors_total",
    "flotilla_command_processing_seconds_total",
    "flotilla_events_total",
    "flotilla_dead_letters_total",
    "flotilla_outbox_pending_events",
    "flotilla_outbox_oldest_pending_age_seconds",
    "flotilla_outbox_published_total",
    "flotilla_outbox_publish_failures_total",
    "flotilla_nats_errors_total",
    "flotilla_bus_connected",
    "flotilla_bus_reconnects_total",
    "flotilla_bus_grants_expired_total",
    "flotilla_bus_refusals_total",
)


def register_runtime(registry: Registry, sources: RuntimeSources) -> None:
    """Register the figures every service has (see `RUNTIME_METRICS`), all read at scrape time."""

    async def collect() -> list[Family]:
        s = sources
        endpoints = s.router.endpoints
        families = [
            Family(
                "flotilla_service_info",
                "gauge",
                "The service's name, version and instance id (value always 1).",
                [Sample({"service": s.service, "version": s.version, "instance_id": s.instance_id}, 1)],
            ),
            Family(
                "flotilla_service_start_time_seconds",
                "gauge",
                "Unix time the service started.",
                [Sample({}, s.started_at)],
            ),
            Family("flotilla_service_ready", "gauge", "1 while /readyz answers ready.", [Sample({}, int(s.ready()))]),
            Family(
                "flotilla_commands_total",
                "counter",
                "Commands received, by subject (bad input included).",
                [Sample({"subject": ep.subject}, ep.stats.num_requests) for ep in endpoints],
            ),
            Family(
                "flotilla_command_errors_total",
                "counter",
                "Commands answered with an error, by subject.",
                [Sample({"subject": ep.subject}, ep.stats.num_errors) for ep in endpoints],
            ),
            Family(
                "flotilla_commands_expired_total",
                "counter",
                "Requests dropped unanswered because their sender had stopped waiting (Flotilla-Reply-By), by subject.",
                [Sample({"subject": ep.subject}, ep.stats.num_expired) for ep in endpoints],
            ),
            Family(
                "flotilla_command_processing_seconds_total",
                "counter",
                "Time spent decoding, handling and encoding commands, by subject.",
                [Sample({"subject": ep.subject}, ep.stats.processing_time_ns / 1e9) for ep in endpoints],
            ),
            Family(
                "flotilla_events_total",
                "counter",
                "Events taken from JetStream by durable consumer and outcome "
                "(handled, duplicate, retried, dead_lettered, ignored).",
                [
                    Sample({"consumer": c.name, "outcome": outcome}, value)
                    for c in s.consumers
                    for outcome, value in (
                        ("handled", c.stats.handled),
                        ("duplicate", c.stats.duplicates),
                        ("retried", c.stats.retried),
                        ("dead_lettered", c.stats.dead_lettered),
                        ("ignored", c.stats.ignored),
                    )
                ],
            ),
            Family(
                "flotilla_dead_letters_total",
                "counter",
                "Messages given up (a DeadLettered event recorded, the message terminated), by consumer and reason "
                "(the error code: malformed, invalid_field, wrong_schema, internal, ...).",
                [
                    Sample({"consumer": c.name, "reason": reason}, n)
                    for c in s.consumers
                    for reason, n in sorted(c.stats.loop.dead_letter_reasons.items())
                ],
            ),
            *(await _outbox_families(s)),
            Family(
                "flotilla_nats_errors_total",
                "counter",
                "Errors the NATS connection reported asynchronously (denied publishes among them).",
                [Sample({}, s.bus_errors.count)],
            ),
            *_link_families(s.lifeline),
        ]
        return families

    registry.collector(collect, RUNTIME_METRICS)


async def _outbox_families(s: RuntimeSources) -> list[Family]:
    row = await s.store.fetchone("SELECT COUNT(*), MIN(created_at) FROM outbox")
    pending = int(row[0]) if row else 0
    oldest = float(row[1]) if row and row[1] is not None else 0.0
    age = max(time.time() - oldest, 0.0) if pending and oldest else 0.0
    relay = s.relay()
    return [
        Family(
            "flotilla_outbox_pending_events",
            "gauge",
            "Committed events not yet acknowledged by JetStream.",
            [Sample({}, pending)],
        ),
        Family(
            "flotilla_outbox_oldest_pending_age_seconds",
            "gauge",
            "Age of the oldest committed event not yet published (0 when the outbox is empty).",
            [Sample({}, age)],
        ),
        Family(
            "flotilla_outbox_published_total",
            "counter",
            "Events published from the outbox and acknowledged by JetStream.",
            [Sample({}, relay.published if relay else 0)],
        ),
        Family(
            "flotilla_outbox_publish_failures_total",
            "counter",
            "Outbox publish rounds that failed and were retried.",
            [Sample({}, relay.failures if relay else 0)],
        ),
    ]


def _link_families(link: Lifeline | None) -> list[Family]:
    """The bus connection's state and history (flotilla_runtime.lifeline)."""
    if link is None:
        return []
    connected = int(link.state is LinkState.CONNECTED)
    return [
        Family("flotilla_bus_connected", "gauge", "1 while the bus connection is up.", [Sample({}, connected)]),
        Family(
            "flotilla_bus_reconnects_total",
            "counter",
            "Times the bus connection was re-established (each a fresh grant for a callout user).",
            [Sample({}, link.stats.reconnects)],
        ),
        Family(
            "flotilla_bus_grants_expired_total",
            "counter",
            "Times the server ended the connection because its grant expired.",
            [Sample({}, link.stats.grants_expired)],
        ),
        Family(
            "flotilla_bus_refusals_total",
            "counter",
            "Connection attempts the server refused (credential refused, or the auth callout did not answer).",
            [Sample({}, link.stats.refusals)],
        ),
    ]
