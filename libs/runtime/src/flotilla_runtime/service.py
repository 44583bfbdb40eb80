"""One service process: settings, logs, traces, store, bus, commands, discovery, probes, metrics, graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import nats.errors
from faststream.nats import NatsBroker
from nats.js import JetStreamContext

from flotilla_contracts import CONTRACTS_VERSION
from flotilla_contracts.envelope import Message
from flotilla_contracts.streams import service_consumer
from flotilla_contracts.subjects import Service
from flotilla_contracts.v1.service import InfoReply, InfoRequest
from flotilla_runtime import telemetry
from flotilla_runtime.bus import BusErrors, ensure_streams, make_broker, redact
from flotilla_runtime.commands import CommandContext, CommandRouter
from flotilla_runtime.consumers import ConsumerStats, EventConsumer, EventHandler
from flotilla_runtime.discovery import Discovery, ServiceIdentity
from flotilla_runtime.health import HealthServer, Verdict
from flotilla_runtime.lifeline import Lifeline
from flotilla_runtime.logs import BoundLogger, get_logger
from flotilla_runtime.metrics import Registry
from flotilla_runtime.migrations import load_migrations
from flotilla_runtime.outbox import OutboxRelay, Publisher
from flotilla_runtime.restartpolicy import Backoff, decide
from flotilla_runtime.runtime_metrics import (
    Counted,
    RuntimeSources,
    instrument_commands,
    instrument_consumers,
    register_runtime,
)
from flotilla_runtime.settings import ServiceSettings
from flotilla_runtime.store import Row, Store

S = TypeVar("S", bound=ServiceSettings)
RESTART_BACKOFF = Backoff()  # a failed background loop: 0.5 s, doubling to 30 s, afresh after 60 s up


@dataclass(frozen=True)
class ServiceSpec(Generic[S]):
    """What a service is: its name, version, settings type, migrations and the wiring of its handlers."""

    service: Service
    version: str
    description: str
    settings_type: type[S]
    setup: Callable[[ServiceApp[S]], Awaitable[None]]
    migrations_package: str | None = None  # a package with a `migrations/` folder of NNNN_name.sql
    # Who the service is on the bus when that is not settled by its URL (the node-agent connecting as its
    # cluster): awaited after `setup`, with the health endpoint up, until it returns; see `BusLogin`.
    login: Callable[[ServiceApp[S]], Awaitable[BusLogin]] | None = None


@dataclass(frozen=True)
class BusLogin:
    """The URL (with user and password) a service connects with, and whether it provisions the streams
    (an agent connected as its cluster may not: the services do).

    `member`: the identity is a member's (a node of a cluster): it answers nothing on the bus, neither `$SRV`
    discovery nor the `info` command, which its grant does not allow. `connect`: further nats-py connect
    options (a node's nkey seed, its token, its inbox prefix). `publisher`: what the outbox relay publishes
    through, given the connection's JetStream context (a member routes events to the identity allowed them).
    """

    url: str
    provision_streams: bool = True
    cluster_id: str = ""
    credential: str = ""
    member: bool = False
    connect: Mapping[str, Any] = field(default_factory=dict)
    publisher: Callable[[JetStreamContext], Publisher] | None = None


class ServiceApp(Generic[S]):
    """The running service as its handlers see it."""

    def __init__(
        self,
        spec: ServiceSpec[S],
        settings: S,
        store: Store,
        broker: NatsBroker,
        errors: BusErrors,
        lifeline: Lifeline | None = None,
    ):
        self.spec = spec
        self.settings = settings
        self.store = store
        self.broker = broker
        self.bus_errors = errors
        self.lifeline = lifeline or Lifeline(spec.service.value)  # the bus connection's state; probes read it
        self.phase = "starting"  # what /readyz says until the service serves
        self.router = CommandRouter(spec.service, max_message_bytes=settings.max_message_bytes)
        self.log: BoundLogger = get_logger(f"flotilla.{spec.service.value}", instance=settings.instance_id)
        self.started_at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        self.ready = False
        self._task_factories: list[Callable[[], Coroutine[Any, Any, None]]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.background_restarts = 0
        self._js: JetStreamContext | None = None
        self.login: BusLogin | None = None  # set when the spec's `login` decided the identity
        self.consumers: list[EventConsumer] = []
        # What the outbox relay calls with each batch before publishing it (`setup` may set it: the
        # orchestrator creates the consumers of the nodes its commands go to).
        self.outbox_prepare: Callable[[list[Row]], Awaitable[None]] | None = None
        # Every pull loop's counters on /metrics by stable name: `consume` adds its consumers, a service with
        # loops of its own (batched intakes) adds them with `count`.
        self.counted: list[Counted] = []
        # Prometheus metrics served at /metrics; a service adds its own in `setup` (see flotilla_runtime.metrics).
        self.metrics = Registry()
        self.router.add("info", InfoRequest, InfoReply, self._info)

    @property
    def name(self) -> str:
        return self.spec.service.value

    def readiness(self) -> Verdict:
        """/readyz: serving, and the bus connection not down for longer than `bus_down_grace_s`."""
        if not self.ready:
            return False, self.phase
        link = self.lifeline.health(self.settings.bus_down_grace_s)
        return link.ready, link.reason

    def liveness(self) -> Verdict:
        """/livez: fails only when the bus connection is closed for good (a restart is then the cure)."""
        link = self.lifeline.health(self.settings.bus_down_grace_s)
        return link.live, link.reason

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise RuntimeError("JetStream is available once the service is connected")
        return self._js

    def background(self, factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `factory()` as a task once connected; it is cancelled on stop.

        A loop that raises is never lost silently: the error is logged with its traceback and the loop is
        started again after a back-off (0.5 s doubling to 30 s), counted in `background_restarts`.
        """
        self._task_factories.append(factory)

    async def _keep_running(self, factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
        name = getattr(factory, "__qualname__", repr(factory))
        loop, streak = asyncio.get_running_loop(), 0
        while True:
            started = loop.time()
            try:
                await factory()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                self.background_restarts += 1
                decision = decide(RESTART_BACKOFF, streak, loop.time() - started, requested=False)
                streak = decision.streak
                self.log.exception("background task %s failed; starting it again in %.1fs", name, decision.delay_s)
                await asyncio.sleep(decision.delay_s)

    def consume(
        self,
        purpose: str,
        filter_subjects: list[str],
        handlers: dict[type[Message], EventHandler],
        batch: int = 256,
        epoch: str = "",
    ) -> EventConsumer:
        """A durable FLEET_EVENTS consumer named `<service>-<purpose>[-<epoch>]`, started once connected.

        Replicas of a service share the durable, so each event is handled by one of them. `epoch`: a read model
        rebuilt from scratch takes a new durable; its metrics keep the stable name `<service>-<purpose>`.
        """
        name = service_consumer(self.spec.service, purpose)
        consumer = EventConsumer(
            service=self.spec.service,
            instance_id=self.settings.instance_id,
            durable=service_consumer(self.spec.service, f"{purpose}-{epoch}") if epoch else name,
            filter_subjects=filter_subjects,
            handlers=handlers,
            store=self.store,
            batch=batch,
            name=name,
        )
        self.consumers.append(consumer)
        self.count(name, consumer.stats)
        self.background(lambda: consumer.run(self.js))
        return consumer

    def count(self, name: str, stats: ConsumerStats) -> None:
        """Show a pull loop's counters on /metrics as consumer `name` (stable: no epoch, no ids)."""
        self.counted.append(Counted(name, stats))

    async def _info(self, _request: InfoRequest, _ctx: CommandContext) -> InfoReply:
        return InfoReply(
            name=self.name,
            instance_id=self.settings.instance_id,
            version=self.spec.version,
            contracts_version=CONTRACTS_VERSION,
            schemas=self.router.schemas(),
            state_path=self.store.path,
            started_at=self.started_at,
        )


def state_db_path(settings: ServiceSettings, service: str) -> str:
    return os.path.join(settings.state_dir, f"{service}.db")


async def run(spec: ServiceSpec[S], settings: S, stop: asyncio.Event | None = None) -> None:
    """Start the service and serve until SIGTERM/SIGINT (or `stop` is set), then stop gracefully."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    name = spec.service.value
    telemetry.setup_tracing(name, spec.version, settings.instance_id, settings.trace_sample_ratio)
    migrations = load_migrations(spec.migrations_package, name) if spec.migrations_package else []
    store = await Store.open(state_db_path(settings, name), migrations, service=name)
    errors = BusErrors()
    client_name = f"flotilla-{name}-{settings.instance_id}"
    lifeline = Lifeline(client_name)
    broker = make_broker(settings.nats_url, client_name, errors, lifeline)
    app = ServiceApp(spec, settings, store, broker, errors, lifeline)
    health = HealthServer(settings.http_host, settings.http_port, app.readiness, app.metrics.render, app.liveness)
    await health.start()
    relay: OutboxRelay | None = None
    discovery: Discovery | None = None
    try:
        register_runtime(
            app.metrics,
            RuntimeSources(
                service=name,
                version=spec.version,
                instance_id=settings.instance_id,
                router=app.router,
                consumers=app.counted,
                store=store,
                bus_errors=errors,
                ready=lambda: app.ready,
                relay=lambda: relay,
                lifeline=lifeline,
            ),
        )
        await spec.setup(app)
        instrument_commands(app.router, app.metrics)
        instrument_consumers(app.consumers, app.metrics)
        if spec.login is not None:
            app.phase = "waiting for the bus login (the cluster's join and approval)"
            app.login = await _login(app, spec.login, stop)
            if app.login is None:
                return
            if app.login.url != settings.nats_url or app.login.connect:
                broker = app.broker = make_broker(app.login.url, client_name, errors, lifeline, app.login.connect)
        serves = app.login is None or not app.login.member
        if serves:
            app.router.install(broker)
        app.phase = "connecting to the bus"
        if not await _connect(app, stop):
            return
        lifeline.attach(broker.connection)
        app._js = broker.connection.jetstream()
        if app.login is None or app.login.provision_streams:
            await ensure_streams(app.js, replicas=settings.stream_replicas)
        await broker.start()
        publisher = app.login.publisher if app.login is not None else None
        relay = OutboxRelay(
            store, publisher(app.js) if publisher else app.js, batch=settings.outbox_batch, prepare=app.outbox_prepare
        )
        relay.start()
        discovery = (
            None
            if not serves
            else Discovery(
                ServiceIdentity(
                    name=name,
                    id=settings.instance_id,
                    version=spec.version,
                    description=spec.description,
                    metadata={
                        "health": health.url,
                        "state": store.path,
                        "contracts": CONTRACTS_VERSION,
                    },
                ),
                app.router,
                extra_stats=lambda: {"outbox_published": relay.published if relay else 0},
            )
        )
        if discovery is not None:
            await discovery.start(broker.connection)
        app._tasks = [asyncio.create_task(app._keep_running(factory)) for factory in app._task_factories]
        app.ready = True
        app.log.info(
            "%s %s serving",
            name,
            spec.version,
            extra={"nats": redact(settings.nats_url), "health": health.url, "state": store.path},
        )
        await stop.wait()
        app.log.info("stopping: draining subscriptions and flushing the outbox")
    finally:
        app.ready, app.phase = False, "stopping"
        await _shutdown(app, discovery, relay, health)


async def _login(
    app: ServiceApp[S], login: Callable[[ServiceApp[S]], Awaitable[BusLogin]], stop: asyncio.Event
) -> BusLogin | None:
    """The service's bus identity, or None when told to stop first (a join may wait for approval)."""
    task = asyncio.ensure_future(login(app))
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([task, stopped], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None
    return task.result()


async def _connect(app: ServiceApp[Any], stop: asyncio.Event) -> bool:
    """Connect, retrying with back-off until the server answers or we are told to stop."""
    delay = 0.5
    while not stop.is_set():
        try:
            await app.broker.connect()
            return True
        except (OSError, nats.errors.Error, TimeoutError) as exc:
            app.lifeline.failed(exc)
            app.log.warning(
                "cannot reach NATS at %s (%s); retrying in %.1fs",
                redact(app.login.url if app.login else app.settings.nats_url),
                exc or type(exc).__name__,
                delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, 10.0)
    return False


async def _shutdown(
    app: ServiceApp[Any], discovery: Discovery | None, relay: OutboxRelay | None, health: HealthServer
) -> None:
    timeout = app.settings.shutdown_timeout_s
    if discovery is not None:
        await discovery.stop()
    for subscriber in app.broker.subscribers:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(subscriber.stop(), timeout)
    for consumer in app.consumers:
        consumer.stop()
    if app._tasks:
        await asyncio.wait(app._tasks, timeout=2.0)
    for task in app._tasks:
        task.cancel()
    for task in app._tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    if relay is not None:
        await relay.stop(flush_timeout_s=timeout)
    app.lifeline.stop()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(app.broker.stop(), timeout)
    await app.store.close()
    await health.stop()
    telemetry.shutdown_tracing()
    app.log.info("stopped")
