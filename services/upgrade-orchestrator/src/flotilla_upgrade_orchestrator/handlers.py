"""The `fleet.v1.cmd.upgrade-orchestrator.upgrade.*` commands: decode, check, run one work, reply."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

from flotilla_contracts.errors import ErrorCode
from flotilla_contracts.v1.upgrade import (
    AbortRolloutRequest,
    ApproveWaveRequest,
    PauseRolloutRequest,
    PlanReply,
    PlanRequest,
    ResumeRolloutRequest,
    RetryRequest,
    RollbackRequest,
    RolloutSpec,
    SkipClusterRequest,
    StartRolloutReply,
    StartRolloutRequest,
)
from flotilla_contracts.v1.upgrade_status import (
    ListRolloutsReply,
    ListRolloutsRequest,
    RolloutReply,
    RolloutStatusReply,
    RolloutStatusRequest,
)
from flotilla_runtime import telemetry
from flotilla_runtime.commands import CommandContext, CommandRouter
from flotilla_runtime.errors import RequestError, TemporaryError
from flotilla_runtime.store import Store, SyncTx
from flotilla_upgrade_orchestrator import control, queries, recovery
from flotilla_upgrade_orchestrator.engine import Engine
from flotilla_upgrade_orchestrator.failover import Fence, SharedFile, guarded
from flotilla_upgrade_orchestrator.plan import Estimates
from flotilla_upgrade_orchestrator.releases import Releases
from flotilla_upgrade_orchestrator.spec import CheckedSpec, SpecError, check_spec
from flotilla_upgrade_orchestrator.writer import LeaseView

T = TypeVar("T")


@dataclass
class Orchestrator:
    """What the handlers share: the store, the engine, the known releases, estimates and a clock."""

    store: Store
    engine: Engine
    releases: Releases = field(default_factory=Releases)
    estimates: Estimates = field(default_factory=Estimates)
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    fleet_ready: Callable[[], bool] = lambda: True
    on_started: Callable[[str], None] = lambda _rollout_id: None
    shared: SharedFile = field(default_factory=SharedFile)
    # This replica's view of a rollout's lease, for status (writer.py); by default: one process, its own lease.
    lease_view: Callable[[str], LeaseView] | None = None

    def __post_init__(self) -> None:
        # Another process may share the state file (failover.py): act only on fresh rows, never below the
        # epoch a newer writer stored.
        if not isinstance(self.engine.epoch_of, Fence):
            self.engine.epoch_of = Fence(self.engine, self.engine.epoch_of)
        if self.lease_view is None:
            held = self.engine.epoch_of.held
            self.lease_view = lambda rollout_id: LeaseView(instance_id="this process", held=held(rollout_id))

    def register(self, router: CommandRouter) -> None:
        router.add("upgrade.plan", PlanRequest, PlanReply, self.plan)
        router.add("upgrade.start", StartRolloutRequest, StartRolloutReply, self.start)
        router.add("upgrade.pause", PauseRolloutRequest, RolloutReply, self.pause)
        router.add("upgrade.resume", ResumeRolloutRequest, RolloutReply, self.resume)
        router.add("upgrade.abort", AbortRolloutRequest, RolloutReply, self.abort)
        router.add("upgrade.approve", ApproveWaveRequest, RolloutReply, self.approve)
        router.add("upgrade.retry", RetryRequest, RolloutReply, self.retry)
        router.add("upgrade.skip", SkipClusterRequest, RolloutReply, self.skip)
        router.add("upgrade.rollback", RollbackRequest, RolloutReply, self.rollback)
        router.add("upgrade.list", ListRolloutsRequest, ListRolloutsReply, self.list_rollouts)
        router.add("upgrade.status", RolloutStatusRequest, RolloutStatusReply, self.status)

    async def run(self, fn: Callable[[SyncTx], T]) -> T:
        """One work in the database thread, through the engine (reload if stale, flush after)."""
        try:
            return await self.store.run(guarded(self.engine, self.shared, fn, self.clock))
        except TemporaryError as exc:  # busy, or disk full: the message says which and what happens next
            self.engine.stale = True
            raise RequestError(ErrorCode.UNAVAILABLE, str(exc), retry_after_s=exc.delay_s) from None

    async def on_rollout(self, rollout_id: str, fn: Callable[[SyncTx], T]) -> T:
        """`run` for a later command on a rollout (pause, resume, retry, ...): its span links to the trace the
        rollout was started in, so the command's own trace and the rollout's are one click apart."""
        span = telemetry.current_span()

        def linked(tx: SyncTx) -> T:
            rollout = self.engine.rollouts.get(rollout_id)
            if rollout is not None:
                telemetry.link(span, rollout.rec.trace, "rollout start")
            return fn(tx)

        return await self.run(linked)

    def _checked(self, spec: RolloutSpec) -> CheckedSpec:
        if not self.fleet_ready():
            raise RequestError(
                ErrorCode.UNAVAILABLE, "still reading the fleet inventory from FLEET_EVENTS; retry in a moment"
            )
        try:
            return check_spec(spec, self.releases)
        except SpecError as exc:
            raise RequestError(exc.code, exc.message, field=exc.field) from None

    async def plan(self, request: PlanRequest, ctx: CommandContext) -> PlanReply:
        checked = self._checked(request.spec)
        return await self.run(lambda tx: queries.plan(self.engine, checked, self.estimates))

    async def start(self, request: StartRolloutRequest, ctx: CommandContext) -> StartRolloutReply:
        checked = self._checked(request.spec)
        now = self.clock()
        reply = await self.run(lambda tx: control.start(self.engine, tx, request, checked, self.estimates, now))
        ctx.log.bind(rollout=reply.rollout_id).info(
            "rollout started", extra={"target": request.spec.target_version, "clusters": reply.plan.clusters_total}
        )
        self.on_started(reply.rollout_id)
        return reply

    async def pause(self, request: PauseRolloutRequest, ctx: CommandContext) -> RolloutReply:
        now = self.clock()
        return await self.on_rollout(request.rollout_id, lambda tx: control.pause(self.engine, tx, request, now))

    async def resume(self, request: ResumeRolloutRequest, ctx: CommandContext) -> RolloutReply:
        now = self.clock()
        return await self.on_rollout(request.rollout_id, lambda tx: control.resume(self.engine, tx, request, now))

    async def abort(self, request: AbortRolloutRequest, ctx: CommandContext) -> RolloutReply:
        now = self.clock()
        return await self.on_rollout(request.rollout_id, lambda tx: control.abort(self.engine, tx, request, now))

    async def approve(self, request: ApproveWaveRequest, ctx: CommandContext) -> RolloutReply:
        now = self.clock()
        return await self.on_rollout(request.rollout_id, lambda tx: control.approve(self.engine, tx, request, now))

    async def retry(self, request: RetryRequest, ctx: CommandContext) -> RolloutReply:
        now = self.clock()
        return await self.on_rollout(request.rollout_id, lambda tx: recovery.retry(self.engine, tx, request, now))

    async def skip(self, request: SkipClusterRequest, ctx: CommandContext) -> RolloutReply:
        now = self.clock()
        return await self.on_rollout(request.rollout_id, lambda tx: recovery.skip(self.engine, tx, request, now))

    async def rollback(self, request: RollbackRequest, ctx: CommandContext) -> RolloutReply:
        now = self.clock()
        return await self.on_rollout(request.rollout_id, lambda tx: recovery.rollback(self.engine, tx, request, now))

    async def list_rollouts(self, request: ListRolloutsRequest, ctx: CommandContext) -> ListRolloutsReply:
        return await self.run(lambda tx: queries.list_rollouts(self.engine, request))

    async def status(self, request: RolloutStatusRequest, ctx: CommandContext) -> RolloutStatusReply:
        assert self.lease_view is not None
        lease = self.lease_view(request.rollout_id)
        return await self.run(lambda tx: queries.status(self.engine, request, lease))
