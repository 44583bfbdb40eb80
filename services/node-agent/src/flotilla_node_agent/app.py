"""Wiring of the node-agent service: validate the settings, pick the mode they name (run_sim, run_kubernetes),
and hand the runtime that mode's login and run."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from flotilla_contracts.subjects import Service
from flotilla_node_agent import __version__, run_sim
from flotilla_node_agent.agent_metrics import COMMANDS, AgentMetrics
from flotilla_node_agent.settings import Settings, validate
from flotilla_runtime.service import BusLogin, ServiceApp, ServiceSpec


@dataclass(frozen=True)
class Mode:
    """One way the agent runs: how it logs in as its cluster (`BUS_LOGIN=cluster`) and how it runs (counting
    into the process's figures)."""

    login: Callable[[ServiceApp[Settings]], Awaitable[BusLogin]]
    run: Callable[[ServiceApp[Settings], AgentMetrics], Awaitable[None]]


def mode(settings: Settings) -> Mode:
    """The mode `FLOTILLA_NODE_AGENT_DRIVER` names."""
    if settings.driver == "kubernetes":
        # Lazy on purpose, not to dodge a cycle: only this mode loads kubernetes_asyncio (heavy to import).
        from flotilla_node_agent import run_kubernetes

        return Mode(run_kubernetes.login, run_kubernetes.run)
    return Mode(run_sim.login, run_sim.run)


async def setup(app: ServiceApp[Settings]) -> None:
    """Validate, then run the agent (and the cluster agent role) once the runtime is connected."""
    validate(app.settings)
    # Once per process: every agent loop the runtime (re)starts counts into these (no metric registered twice).
    metrics = AgentMetrics()
    metrics.register(app.metrics)
    app.count(COMMANDS, metrics.commands)
    if not app.settings.node_name:
        # `flotilla up` starts every service; without a node there is nothing to drive but `info`.
        app.log.warning("no node configured (FLOTILLA_NODE_AGENT_NODE_NAME); serving info only")
        return

    async def agent() -> None:
        try:
            await mode(app.settings).run(app, metrics)
        except asyncio.CancelledError:
            raise
        except Exception:
            app.log.exception("the node agent stopped on an error")
            raise

    app.background(agent)


async def login(app: ServiceApp[Settings]) -> BusLogin:
    """Who the agent is on the bus: as configured, or its cluster (`BUS_LOGIN=cluster`, after joining).
    Runs after `setup`, which validated the settings."""
    if app.settings.bus_login != "cluster":
        return BusLogin(url=app.settings.nats_url)
    return await mode(app.settings).login(app)


SPEC = ServiceSpec(
    service=Service.NODE_AGENT,
    version=__version__,
    description="Runs on every node: heartbeats, node reports and the node-level upgrade steps.",
    settings_type=Settings,
    setup=setup,
    migrations_package="flotilla_node_agent",
    login=login,
)
