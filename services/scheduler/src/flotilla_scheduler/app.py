"""Wiring of the scheduler service: its commands, its event consumer and the toleration timer."""

from __future__ import annotations

import asyncio

from flotilla_contracts.subjects import Service
from flotilla_runtime.disruption import DisruptionSettings
from flotilla_runtime.errors import TemporaryError
from flotilla_runtime.service import ServiceApp, ServiceSpec
from flotilla_runtime.settings import env_prefix
from flotilla_runtime.trust import RefusalLedger
from flotilla_scheduler import __version__, metrics
from flotilla_scheduler import store as tables
from flotilla_scheduler.engine import Engine
from flotilla_scheduler.handlers import Scheduler, utc_now
from flotilla_scheduler.readmodel import ReadModel


class Settings(DisruptionSettings, kw_only=True, frozen=True):
    """`FLOTILLA_SCHEDULER_*` environment variables (see flotilla_runtime.settings for the shared ones and
    flotilla_runtime.disruption for DISRUPTION_*)."""

    # How often to look for NoExecute tolerations that ran out (tolerationSeconds).
    timer_tick_s: float = 0.5


async def setup(app: ServiceApp[Settings]) -> None:
    """Load the state, register the commands, consume cluster and applied-status events, run the timer."""
    scheduler = Scheduler(app.store, Engine(utc_now, app.settings.disruption_policy(env_prefix(app.name))))
    await scheduler.load()
    scheduler.register(app.router)
    metrics.register(app.metrics, scheduler.engine)
    read_model = ReadModel(scheduler.engine, RefusalLedger(Service.SCHEDULER.value, app.metrics))
    epoch = await tables.epoch(app.store)
    app.consume("fleet", read_model.filters(), read_model.handlers(), epoch=epoch)
    app.consume("applied", read_model.report_filters(), read_model.handlers(), epoch=epoch)
    tick = app.settings.timer_tick_s

    async def timer() -> None:
        while True:
            await asyncio.sleep(tick)
            try:
                await scheduler.expire_due()
            except TemporaryError as exc:
                app.log.warning("toleration timer: %s; will retry", exc)

    app.background(timer)


SPEC = ServiceSpec(
    service=Service.SCHEDULER,
    version=__version__,
    description="Places workloads on clusters by selectors, taints, weights and spread; re-places on change.",
    settings_type=Settings,
    setup=setup,
    migrations_package="flotilla_scheduler",
)
