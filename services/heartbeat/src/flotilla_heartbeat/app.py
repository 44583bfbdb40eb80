"""Wiring of the heartbeat service: the parts of one replica, its commands and what it runs in the background.

The rules live elsewhere: health in `health_state.py` / `domain.py`, queries in `handlers.py`, partition
scatter/gather in `partition_queries.py`, the loop in `tick_loop.py`, settings in `settings.py`.
"""

from __future__ import annotations

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
from flotilla_heartbeat.clock import SystemClock
from flotilla_heartbeat.deafness import Deafness, SlowConsumerWatch
from flotilla_heartbeat.domain import HealthModel
from flotilla_heartbeat.health_state import Policy
from flotilla_heartbeat.ingest import Ingest
from flotilla_heartbeat.membership import Membership
from flotilla_heartbeat.metrics import register_metrics
from flotilla_heartbeat.noise import NoiseWindow
from flotilla_heartbeat.partition_queries import PartitionQueries
from flotilla_heartbeat.quota import Quota
from flotilla_heartbeat.restore import restore
from flotilla_heartbeat.settings import Settings, owned_partitions, validate
from flotilla_heartbeat.tick_loop import TickLoop
from flotilla_runtime.commands import CommandContext
from flotilla_runtime.lifeline import LinkState
from flotilla_runtime.service import ServiceApp, ServiceSpec
from flotilla_runtime.trust import RefusalLedger


def policy_of(settings: Settings) -> Policy:
    """The health model's detection settings."""
    return Policy(
        interval_s=settings.interval_s,
        missed_intervals=settings.missed_intervals,
        lost_after_s=settings.lost_after_s,
        skew_threshold_s=settings.clock_skew_threshold_s,
        startup_grace_s=settings.startup_grace_s,
        flap_window_s=settings.flap_window_s,
    )


def quota_of(settings: Settings) -> Quota:
    """What one member cluster may make this replica track, and how fast it may send."""
    return Quota(
        max_nodes=settings.max_nodes_per_cluster, interval_s=settings.interval_s, headroom=settings.rate_headroom
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
        self.model = HealthModel(policy_of(settings), started=now, wall_offset=wall - now)
        self.noise = NoiseWindow(settings.noise_window_s, started_wall=wall)
        quota = quota_of(settings)
        self.ledger = RefusalLedger(Service.HEARTBEAT.value, app.metrics, window_s=settings.refusal_window_s)
        self.membership = Membership(
            self.model,
            tuple(self.owned),
            settings.partition_count,
            lambda: self.clock()[0],
            quota=quota,
            ledger=self.ledger,
        )
        self.drops = SlowConsumerWatch()  # heartbeats nats-py dropped for us: verdicts are held (deafness.py)
        app.bus_errors.drop_listeners.append(self.drops)
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
        self.loop = TickLoop(
            app.store,
            self.model,
            self.ingest,
            self.noise,
            app.log,
            self.clock,
            settings.tick_s,
            settings.checkpoint_interval_s,
            deafness=Deafness(
                lambda: (app.lifeline.stats.disconnects, app.lifeline.state is LinkState.CONNECTED),
                lambda: self.drops.dropped,
            ),
        )
        self.queries = PartitionQueries(
            self.model,
            self.owned,
            settings.partition_count,
            lambda: app.broker.connection,
            app.log,
            peer_timeout_s=settings.peer_timeout_s,
            max_bytes=settings.max_message_bytes,
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
        """Subscribe to heartbeats and partition queries, then run the tick loop until cancelled."""
        owned, count = tuple(self.owned), self.settings.partition_count
        await self.ingest.subscribe(self.app.broker.connection, partitions.heartbeat_filters(owned, count))
        serving = await self.queries.serve()
        self.app.log.info("ingesting heartbeats", extra={"partitions": self.owned, "partition_count": count})
        try:
            await self.loop.run(lambda: self.app.ready)
        finally:
            await self.queries.stop(serving)
            await self.ingest.unsubscribe()
            self.ingest.flush()
            await self.loop.save()


async def setup(app: ServiceApp[Settings]) -> None:
    """Register handlers on the app; the runtime already serves `info` and service discovery."""
    validate(app.settings)
    hb = Heartbeats(app)
    app.heartbeats = hb  # type: ignore[attr-defined]  # for in-process tests and the benchmark
    members = await restore(app.store, hb.model, hb.membership)
    epoch = await tables.membership_epoch(app.store)
    app.consume("members", hb.membership.filters(), hb.membership.handlers(), epoch=epoch)
    app.background(hb.run)
    register_metrics(app.metrics, hb.ingest, hb.model, hb.owned, bus_drops=lambda: hb.drops.dropped)
    count = app.settings.partition_count

    @app.router.command("config.get", HeartbeatConfigRequest, HeartbeatConfig)
    async def config_get(_request: HeartbeatConfigRequest, _ctx: CommandContext) -> HeartbeatConfig:
        return hb.config()

    @app.router.command("health.summary", FleetHealthRequest, FleetHealthReply)
    async def health_summary(request: FleetHealthRequest, _ctx: CommandContext) -> FleetHealthReply:
        answers = await hb.queries.gather("health.summary", request, FleetHealthReply)
        return handlers.merge_summaries(answers, request.worst, count)

    @app.router.command("health.clusters", ClustersHealthRequest, ClustersHealthReply)
    async def health_clusters(request: ClustersHealthRequest, _ctx: CommandContext) -> ClustersHealthReply:
        answers = await hb.queries.gather("health.clusters", request, ClustersHealthReply)
        return handlers.merge_clusters(answers, request.limit, count)

    @app.router.command("health.nodes", NodesHealthRequest, NodesHealthReply)
    async def health_nodes(request: NodesHealthRequest, _ctx: CommandContext) -> NodesHealthReply:
        answers = await hb.queries.gather("health.nodes", request, NodesHealthReply)
        return handlers.merge_nodes(answers, request.limit, count)

    approved = sum(1 for state in members.values() if state == ClusterState.APPROVED)
    app.log.info("heartbeat wired", extra={"members": approved, "tracked_clusters": len(hb.model.clusters)})


SPEC = ServiceSpec(
    service=Service.HEARTBEAT,
    version=__version__,
    description="Turns node heartbeats into node and cluster health; publishes only transitions.",
    settings_type=Settings,
    setup=setup,
    migrations_package="flotilla_heartbeat",
)
