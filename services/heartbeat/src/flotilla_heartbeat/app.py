"""Wiring of the heartbeat service: its settings, its commands and what it runs in the background."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from flotilla_contracts import subjects
from flotilla_contracts.envelope import H_SCHEMA, Message, schema_id
from flotilla_contracts.subjects import Service
from flotilla_contracts.v1.heartbeat import (
    ClustersHealthReply,
    ClustersHealthRequest,
    FleetHealthReply,
    FleetHealthRequest,
    HeartbeatConfig,
    HeartbeatConfigRequest,
    NodesHealthReply,
    NodesHealthRequest,
)
from flotilla_contracts.v1.registration import ClusterState
from flotilla_heartbeat import __version__, handlers, partitions
from flotilla_heartbeat import store as tables
from flotilla_heartbeat.deafness import Deafness
from flotilla_heartbeat.domain import HealthModel, Policy
from flotilla_heartbeat.ingest import Ingest
from flotilla_heartbeat.membership import Membership
from flotilla_heartbeat.noise import NoiseWindow
from flotilla_heartbeat.pump import Pump, SystemClock
from flotilla_heartbeat.quota import Quota
from flotilla_heartbeat.restore import restore
from flotilla_runtime import codec
from flotilla_runtime.commands import CommandContext
from flotilla_runtime.errors import RequestError, SettingsError
from flotilla_runtime.lifeline import LinkState
from flotilla_runtime.metrics import Family, Sample
from flotilla_runtime.service import ServiceApp, ServiceSpec
from flotilla_runtime.settings import ServiceSettings
from flotilla_runtime.trust import RefusalLedger

Q = TypeVar("Q", bound=Message)
R = TypeVar("R", bound=Message)


class Settings(ServiceSettings, kw_only=True, frozen=True):
    """`FLOTILLA_HEARTBEAT_*` environment variables (see flotilla_runtime.settings for the shared ones)."""

    interval_s: float = 10.0
    missed_intervals: int = 3
    lost_after_s: float = 300.0
    clock_skew_threshold_s: float = 30.0
    startup_grace_s: float = 30.0
    flap_window_s: float = 30.0
    partition_count: int = 1
    partitions: str = ""  # owned partitions, e.g. "0,2"; empty: all
    noise_window_s: float = 60.0
    checkpoint_interval_s: float = 5.0
    tick_s: float = 0.1
    batch: int = 1024
    peer_timeout_s: float = 2.0
    max_nodes_per_cluster: int = 5000  # tracked nodes per cluster; over it a new node is refused (node_quota)
    rate_headroom: float = 3.0  # heartbeats a cluster may send per tracked node per interval, on average
    refusal_window_s: float = 60.0  # one security event per cluster and reason per window

    def policy(self) -> Policy:
        return Policy(
            interval_s=self.interval_s,
            missed_intervals=self.missed_intervals,
            lost_after_s=self.lost_after_s,
            skew_threshold_s=self.clock_skew_threshold_s,
            startup_grace_s=self.startup_grace_s,
            flap_window_s=self.flap_window_s,
        )

    def quota(self) -> Quota:
        return Quota(max_nodes=self.max_nodes_per_cluster, interval_s=self.interval_s, headroom=self.rate_headroom)


def owned_partitions(settings: Settings) -> tuple[int, ...]:
    try:
        return partitions.parse_owned(settings.partitions, settings.partition_count)
    except ValueError as exc:
        raise SettingsError(f"FLOTILLA_HEARTBEAT_PARTITIONS / PARTITION_COUNT: {exc}") from None


def validate(settings: Settings) -> None:
    owned_partitions(settings)
    positive = ("interval_s", "lost_after_s", "clock_skew_threshold_s", "flap_window_s", "tick_s", "noise_window_s")
    for name in (*positive, "max_nodes_per_cluster", "refusal_window_s"):
        if getattr(settings, name) <= 0:
            raise SettingsError(f"FLOTILLA_HEARTBEAT_{name.upper()} must be above 0")
    if settings.missed_intervals < 1 or settings.lost_after_s <= settings.interval_s * settings.missed_intervals:
        raise SettingsError("FLOTILLA_HEARTBEAT_LOST_AFTER_S must exceed INTERVAL_S x MISSED_INTERVALS")
    if settings.rate_headroom < 1.0:
        raise SettingsError(
            "FLOTILLA_HEARTBEAT_RATE_HEADROOM must be at least 1 (heartbeats per node per interval it lets through)"
        )


class Heartbeats:
    """The parts of one running replica, shared by its commands and background tasks."""

    def __init__(self, app: ServiceApp[Settings]) -> None:
        settings = app.settings
        self.app = app
        self.settings = settings
        self.owned = list(owned_partitions(settings))
        self.clock = SystemClock()
        now, wall = self.clock()
        self.model = HealthModel(settings.policy(), started=now, wall_offset=wall - now)
        self.noise = NoiseWindow(settings.noise_window_s, started_wall=wall)
        quota = settings.quota()
        self.ledger = RefusalLedger(Service.HEARTBEAT.value, app.metrics, window_s=settings.refusal_window_s)
        self.membership = Membership(
            self.model,
            tuple(self.owned),
            settings.partition_count,
            lambda: self.clock()[0],
            quota=quota,
            ledger=self.ledger,
        )
        self.ingest = Ingest(
            self.model,
            self.noise,
            self.membership.noise_reason,
            quota=quota,
            ledger=self.ledger,
            max_bytes=settings.max_message_bytes,
            batch=settings.batch,
            now=self.clock,
        )
        self.pump = Pump(
            app.store,
            self.model,
            self.ingest,
            self.noise,
            app.log,
            self.clock,
            settings.tick_s,
            settings.checkpoint_interval_s,
            deafness=Deafness(lambda: (app.lifeline.stats.disconnects, app.lifeline.state is LinkState.CONNECTED)),
        )

    def config(self) -> HeartbeatConfig:
        s = self.settings
        return HeartbeatConfig(
            interval_s=s.interval_s,
            missed_intervals=s.missed_intervals,
            lost_after_s=s.lost_after_s,
            clock_skew_threshold_s=s.clock_skew_threshold_s,
            startup_grace_s=s.startup_grace_s,
            partition_count=s.partition_count,
        )

    async def run(self) -> None:
        """Subscribe to heartbeats and partition queries, then pump until cancelled."""
        nc: Client = self.app.broker.connection
        await self.ingest.subscribe(nc, partitions.heartbeat_filters(tuple(self.owned), self.settings.partition_count))
        serving = [
            await nc.subscribe(subject, queue=group, cb=self._partition_query)
            for subject, group in self._partition_subjects()
        ]
        self.app.log.info(
            "ingesting heartbeats", extra={"partitions": self.owned, "partition_count": self.settings.partition_count}
        )
        try:
            await self.pump.run(lambda: self.app.ready)
        finally:
            for sub in serving:
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()
            await self.ingest.unsubscribe()
            self.ingest.flush()
            await self.pump.save()

    def _partition_subjects(self) -> list[tuple[str, str]]:
        return [
            (
                subjects.partition_command(Service.HEARTBEAT, p, verb),
                subjects.partition_queue_group(Service.HEARTBEAT, p),
            )
            for p in self.owned
            for verb in _LOCAL
        ]

    async def _partition_query(self, msg: Msg) -> None:
        """A peer asks for one partition's answer (this replica answers for all it owns at once)."""
        verb = msg.subject.split(".partition.", 1)[1].split(".", 1)[1]
        request_type, local = _LOCAL[verb]
        try:
            request = codec.decode(
                msg.data, request_type, headers=msg.headers, max_bytes=self.settings.max_message_bytes
            )
            body, headers = codec.ok_reply(local(self, request))
        except RequestError as exc:
            body, headers = codec.error_reply(exc.to_body())
        with contextlib.suppress(nats.errors.Error):
            await self.app.broker.connection.publish(msg.reply, body, headers=headers)

    async def gather(self, verb: str, request: Q, reply_type: type[R]) -> list[R]:
        """This replica's answer plus one per partition owned elsewhere (missing ones are left out)."""
        _, local = _LOCAL[verb]
        answers: list[R] = [local(self, request)]
        others = [p for p in range(self.settings.partition_count) if p not in self.owned]
        if others:
            found = await asyncio.gather(*(self._ask(p, verb, request, reply_type) for p in others))
            seen = set(self.owned)
            for answer in found:
                parts = set(getattr(answer, "partitions", []))
                if answer is not None and not parts & seen:
                    answers.append(answer)
                    seen |= parts
        return answers

    async def _ask(self, partition: int, verb: str, request: Q, reply_type: type[R]) -> R | None:
        nc: Client = self.app.broker.connection
        subject = subjects.partition_command(Service.HEARTBEAT, partition, verb)
        try:
            msg = await nc.request(
                subject,
                codec.encode(request),
                timeout=self.settings.peer_timeout_s,
                headers={H_SCHEMA: schema_id(type(request))},
            )
            reply = codec.decode_reply(msg.data, reply_type)
        except (nats.errors.Error, TimeoutError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            self.app.log.warning("partition %d did not answer %s: %s", partition, verb, type(exc).__name__)
            return None
        return reply.data if reply.ok else None


def _summary(hb: Heartbeats, request: Any) -> Any:
    return handlers.summary(hb.model, request, hb.owned, hb.settings.partition_count)


def _clusters(hb: Heartbeats, request: Any) -> Any:
    return handlers.clusters_page(hb.model, request, hb.owned, hb.settings.partition_count)


def _nodes(hb: Heartbeats, request: Any) -> Any:
    return handlers.nodes_page(hb.model, request, hb.owned, hb.settings.partition_count)


_LOCAL: dict[str, tuple[type[Message], Callable[[Heartbeats, Any], Any]]] = {
    "health.summary": (FleetHealthRequest, _summary),
    "health.clusters": (ClustersHealthRequest, _clusters),
    "health.nodes": (NodesHealthRequest, _nodes),
}


async def setup(app: ServiceApp[Settings]) -> None:
    """Register handlers on the app; the runtime already serves `info` and service discovery."""
    validate(app.settings)
    hb = Heartbeats(app)
    app.heartbeats = hb  # type: ignore[attr-defined]  # for in-process tests and the benchmark
    members = await restore(app.store, hb.model, hb.membership)
    epoch = await tables.membership_epoch(app.store)
    app.consume(f"members-{epoch}", hb.membership.filters(), hb.membership.handlers())
    app.background(hb.run)
    register_metrics(app, hb)
    count = app.settings.partition_count

    @app.router.command("config.get", HeartbeatConfigRequest, HeartbeatConfig)
    async def config_get(_request: HeartbeatConfigRequest, _ctx: CommandContext) -> HeartbeatConfig:
        return hb.config()

    @app.router.command("health.summary", FleetHealthRequest, FleetHealthReply)
    async def health_summary(request: FleetHealthRequest, _ctx: CommandContext) -> FleetHealthReply:
        return handlers.merge_summaries(
            await hb.gather("health.summary", request, FleetHealthReply), request.worst, count
        )

    @app.router.command("health.clusters", ClustersHealthRequest, ClustersHealthReply)
    async def health_clusters(request: ClustersHealthRequest, _ctx: CommandContext) -> ClustersHealthReply:
        answers = await hb.gather("health.clusters", request, ClustersHealthReply)
        return handlers.merge_clusters(answers, request.limit, count)

    @app.router.command("health.nodes", NodesHealthRequest, NodesHealthReply)
    async def health_nodes(request: NodesHealthRequest, _ctx: CommandContext) -> NodesHealthReply:
        answers = await hb.gather("health.nodes", request, NodesHealthReply)
        return handlers.merge_nodes(answers, request.limit, count)

    approved = sum(1 for state in members.values() if state == ClusterState.APPROVED)
    app.log.info("heartbeat wired", extra={"members": approved, "tracked_clusters": len(hb.model.clusters)})


def register_metrics(app: ServiceApp[Settings], hb: Heartbeats) -> None:
    """Heartbeat figures on /metrics, read at scrape time (nothing is added to the ingest hot path)."""
    metrics = app.metrics
    metrics.counter_fn(
        "flotilla_heartbeats_received_total",
        "Heartbeats received by this replica, valid or not (rate() of it is the ingest rate).",
        lambda: hb.ingest.received,
    )
    metrics.counter_fn(
        "flotilla_heartbeats_applied_total", "Heartbeats applied to the health model.", lambda: hb.ingest.applied
    )
    metrics.collector(
        lambda: [
            Family(
                "flotilla_heartbeats_dropped_total",
                "counter",
                "Heartbeats dropped, by reason (a stable error code or a membership reason).",
                [Sample({"reason": str(reason)}, n) for reason, n in hb.ingest.dropped.items()],
            )
        ],
        ["flotilla_heartbeats_dropped_total"],
    )
    metrics.gauge_fn(
        "flotilla_heartbeat_tracked_nodes",
        "Nodes whose health this replica tracks (its partitions).",
        lambda: sum(len(cluster.nodes) for cluster in hb.model.clusters.values()),
    )
    metrics.gauge_fn(
        "flotilla_heartbeat_tracked_clusters", "Clusters this replica tracks.", lambda: len(hb.model.clusters)
    )
    metrics.gauge_fn("flotilla_heartbeat_partitions_owned", "Partitions this replica owns.", lambda: len(hb.owned))


SPEC = ServiceSpec(
    service=Service.HEARTBEAT,
    version=__version__,
    description="Turns node heartbeats into node and cluster health; publishes only transitions.",
    settings_type=Settings,
    setup=setup,
    migrations_package="flotilla_heartbeat",
)
