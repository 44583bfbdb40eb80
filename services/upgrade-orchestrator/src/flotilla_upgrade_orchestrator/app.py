"""Wiring of the upgrade-orchestrator service: settings, commands, event intake, leases and the tick."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime

from flotilla_contracts import catalogue
from flotilla_contracts.subjects import Entity, Service, entity_events
from flotilla_contracts.v1.agent import NodeStepReported
from flotilla_contracts.v1.heartbeat import ClusterHealthChanged, NodeHealthChanged
from flotilla_contracts.v1.registration_events import (
    ClusterApproved,
    ClusterDeregistered,
    ClusterJoinRequested,
    ClusterLabelsChanged,
    ClusterRejected,
    ClusterRejoined,
    ClusterTaintsChanged,
    ClusterVersionChanged,
    NodeAdded,
    NodeChanged,
    NodeRemoved,
)
from flotilla_runtime import telemetry
from flotilla_runtime.agent_consumers import AgentConsumers
from flotilla_runtime.disruption import DisruptionSettings, Watch
from flotilla_runtime.errors import SettingsError
from flotilla_runtime.service import ServiceApp, ServiceSpec
from flotilla_runtime.settings import env_prefix
from flotilla_runtime.store import SyncTx
from flotilla_runtime.trust import RefusalLedger
from flotilla_upgrade_orchestrator import __version__, metrics, reactions, reports
from flotilla_upgrade_orchestrator.engine import Engine
from flotilla_upgrade_orchestrator.handlers import Orchestrator
from flotilla_upgrade_orchestrator.intake import Intake, SyncHandler
from flotilla_upgrade_orchestrator.lease import KvLeases
from flotilla_upgrade_orchestrator.plan import Estimates
from flotilla_upgrade_orchestrator.releases import Releases
from flotilla_upgrade_orchestrator.timeouts import Timeouts
from flotilla_upgrade_orchestrator.writer import LeaseView


class Settings(DisruptionSettings, kw_only=True, frozen=True):
    """`FLOTILLA_UPGRADE_ORCHESTRATOR_*` environment variables (see flotilla_runtime.settings for the shared ones
    and flotilla_runtime.disruption for DISRUPTION_*)."""

    tick_interval_s: float = 1.0  # soak ends, windows, step timeouts are looked at this often
    lease_bucket: str = "upgrade_orchestrator_leases"  # JetStream KV bucket of rollout leases (I6)
    lease_ttl_s: float = 15.0  # a lease not renewed for this long may be taken over
    cordon_timeout_s: float = 120.0  # also the margin added to drain and verify timeouts
    upgrade_timeout_s: float = 1800.0  # upgrade and rollback steps
    uncordon_timeout_s: float = 120.0
    step_grace_s: float = 60.0  # past a command's deadline before the node fails with StepTimeout
    no_progress_s: float = 600.0  # Running with nothing issued or received this long, no wait that ends: NoProgress
    inventory_timeout_s: float = 300.0  # a cluster whose nodes all finished waits this long for its inventory
    extra_versions: str = ""  # comma-separated Kubernetes versions newer than the built-in release table
    intake_batch: int = 512  # events applied per transaction
    intake_max_deliveries: int = 10  # an event still failing at this delivery is dead-lettered, the rest go on
    estimate_drain_s: float = 60.0  # for the plan's estimate only
    estimate_upgrade_s: float = 180.0
    # Nodes' consumers on FLEET_AGENT (flotilla_runtime.agent_consumers): created before a node's first command,
    # retired after this long with nothing to do; how long a node has to acknowledge a command it took.
    agent_consumer_idle_s: float = 900.0
    agent_ack_wait_s: float = 30.0


def _check(settings: Settings, prefix: str) -> Releases:
    if settings.tick_interval_s <= 0:
        raise SettingsError(f"{prefix}TICK_INTERVAL_S must be above 0")
    if settings.lease_ttl_s < 3 * settings.tick_interval_s:
        raise SettingsError(f"{prefix}LEASE_TTL_S must be at least 3 x TICK_INTERVAL_S")
    if settings.no_progress_s <= 0:
        raise SettingsError(f"{prefix}NO_PROGRESS_S must be above 0")
    if settings.agent_consumer_idle_s < 180 or settings.agent_ack_wait_s <= 0:
        raise SettingsError(f"{prefix}AGENT_CONSUMER_IDLE_S must be at least 180 and AGENT_ACK_WAIT_S above 0")
    if settings.intake_batch < 1:
        raise SettingsError(f"{prefix}INTAKE_BATCH must be at least 1")
    if settings.intake_max_deliveries < 1:
        raise SettingsError(f"{prefix}INTAKE_MAX_DELIVERIES must be at least 1")
    try:
        return Releases.with_extra(settings.extra_versions.split(","))
    except ValueError as exc:
        raise SettingsError(f"{prefix}EXTRA_VERSIONS: {exc}") from None


async def setup(app: ServiceApp[Settings]) -> None:
    """Commands, the three event intakes, the lease keeper and the tick."""
    settings = app.settings
    releases = _check(settings, env_prefix(app.name))
    leases = KvLeases(bucket=settings.lease_bucket, owner=settings.instance_id, ttl_s=settings.lease_ttl_s)
    engine = Engine(
        timeouts=Timeouts(
            cordon_s=settings.cordon_timeout_s,
            upgrade_s=settings.upgrade_timeout_s,
            uncordon_s=settings.uncordon_timeout_s,
            grace_s=settings.step_grace_s,
            no_progress_s=settings.no_progress_s,
            inventory_s=settings.inventory_timeout_s,
        ),
        epoch_of=leases.epoch,
        disruption=Watch(settings.disruption_policy(env_prefix(app.name))),
    )
    wake = asyncio.Event()
    intakes: list[Intake] = []
    orchestrator = Orchestrator(
        store=app.store,
        engine=engine,
        releases=releases,
        estimates=Estimates(drain_s=settings.estimate_drain_s, upgrade_s=settings.estimate_upgrade_s),
        fleet_ready=lambda: all(i.caught_up.is_set() for i in intakes),
        on_started=lambda _rollout_id: wake.set(),
        lease_view=lambda rollout_id: LeaseView(
            instance_id=settings.instance_id,
            held=leases.epoch(rollout_id),
            seen=leases.seen.get(rollout_id),
            now=time.time(),
        ),
    )
    orchestrator.register(app.router)
    await orchestrator.run(lambda tx: None)  # load the state once before serving

    ledger = RefusalLedger(Service.UPGRADE_ORCHESTRATOR.value, app.metrics)
    step_times = metrics.register(app.metrics, engine)
    steps: dict[type, SyncHandler] = {
        NodeStepReported: step_times.wrap(
            lambda e, subject, tx, now: reports.receive_report(engine, ledger, tx, subject, e, now)
        ),
    }
    inventory: dict[type, SyncHandler] = {
        kind: (lambda e, subject, tx, now: reactions.on_cluster_info(engine, e.cluster))
        for kind in (
            ClusterJoinRequested,
            ClusterApproved,
            ClusterRejected,
            ClusterRejoined,
            ClusterLabelsChanged,
            ClusterTaintsChanged,
            ClusterDeregistered,
            ClusterVersionChanged,
        )
    }
    inventory[NodeAdded] = lambda e, subject, tx, now: reactions.on_node_facts(engine, tx, e.cluster_id, e.node, now)
    inventory[NodeChanged] = lambda e, subject, tx, now: reactions.on_node_facts(
        engine, tx, e.cluster_id, e.node, now, e.changed_fields
    )
    inventory[NodeRemoved] = lambda e, subject, tx, now: reactions.on_node_removed(engine, e)
    inventory[NodeHealthChanged] = lambda e, subject, tx, now: reactions.on_node_health(engine, tx, e, now)
    inventory[ClusterHealthChanged] = lambda e, subject, tx, now: reactions.on_cluster_health(engine, tx, e, now)
    step_filter = catalogue.operation_for(NodeStepReported).filter
    fleet_filters = [entity_events(e) for e in (Entity.CLUSTER, Entity.NODE, Entity.CLUSTER_HEALTH, Entity.NODE_HEALTH)]
    for purpose, filters, handlers in (("fleet", fleet_filters, inventory), ("steps", [step_filter], steps)):
        intake = Intake(
            purpose=purpose,
            filter_subjects=filters,
            handlers=handlers,
            engine=engine,
            run_work=orchestrator.run,
            store=app.store,
            instance_id=settings.instance_id,
            batch=settings.intake_batch,
            max_deliveries=settings.intake_max_deliveries,
        )
        intakes.append(intake)
        app.count(intake.durable, intake.stats)
        app.background(lambda intake=intake: intake.run(app.js))  # type: ignore[misc]

    async def keep_leases() -> None:
        await leases.provision(app.js)
        renew_every = settings.lease_ttl_s / 3
        while True:
            wanted = await orchestrator.run(lambda tx: _needing_writer(engine))
            for rollout_id in wanted:
                before = leases.epoch(rollout_id)
                epoch = await leases.claim(rollout_id, engine.rollouts[rollout_id].rec.epoch)
                if epoch is not None and epoch != before:
                    app.log.bind(rollout=rollout_id).info("lease taken", extra={"epoch": epoch})
                    await orchestrator.run(lambda tx, r=rollout_id: _advance_in_its_trace(engine, tx, r))  # type: ignore[misc]
            for rollout_id in [r for r in leases.held if r not in wanted]:
                await leases.release(rollout_id)
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), renew_every)

    async def tick() -> None:
        last_prune = time.monotonic()
        while True:
            await asyncio.sleep(settings.tick_interval_s)
            await orchestrator.run(lambda tx: reactions.tick(engine, tx, datetime.now(UTC)))
            if time.monotonic() - last_prune > 600:
                last_prune = time.monotonic()
                await app.store.prune_processed(older_than_s=7200)

    consumers = AgentConsumers(
        lambda: app.js,
        ack_wait_s=settings.agent_ack_wait_s,
        confirm_s=settings.agent_consumer_idle_s / 6,
        idle_s=settings.agent_consumer_idle_s,
    )
    app.outbox_prepare = consumers.prepare  # a node's consumer exists before its first command goes out
    app.background(lambda: consumers.keep_retiring(every_s=settings.agent_consumer_idle_s / 3))
    app.background(keep_leases)
    app.background(tick)
    app.log.debug("upgrade-orchestrator wired", extra={"commands": [ep.verb for ep in app.router.endpoints]})


def _needing_writer(engine: Engine) -> list[str]:
    """Rollouts still moving, or still giving nodes back."""
    return [
        r.rollout_id
        for r in engine.rollouts.values()
        if not r.final or any(n.in_flight is not None or n.cordoned_by_us for c in r.clusters.values() for n in c.nodes)
    ]


SPEC = ServiceSpec(
    service=Service.UPGRADE_ORCHESTRATOR,
    version=__version__,
    description="Plans and runs safe Kubernetes upgrade rollouts across the fleet.",
    settings_type=Settings,
    setup=setup,
    migrations_package="flotilla_upgrade_orchestrator",
)


def _advance_in_its_trace(engine: Engine, tx: SyncTx, rollout_id: str) -> None:
    """A rollout whose lease we just took moves on inside a span of its start trace: what it emits joins it."""
    rollout = engine.rollouts[rollout_id]
    with telemetry.consumer_span("upgrade-orchestrator advance", rollout.rec.trace, "lease"), tx.in_current_trace():
        reactions.advance(engine, tx, rollout, datetime.now(UTC))
