"""The agent with the sim driver (`FLOTILLA_NODE_AGENT_DRIVER=sim`): the process is a one-node cluster and its
own cluster agent. Its login (`BUS_LOGIN=cluster`) keeps the membership in the journal; its run drives the
simulated node."""

from __future__ import annotations

from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from flotilla_contracts.v1.agent import NodeFacts
from flotilla_contracts.v1.common import NodeRole
from flotilla_contracts.v1.registration import ClusterState
from flotilla_node_agent.agent_metrics import AgentMetrics
from flotilla_node_agent.apply_backends import SimApplyBackend
from flotilla_node_agent.bus_login import cluster_connector, cluster_role, login_with
from flotilla_node_agent.cluster_setup import build_cluster_agent, node_process_identity
from flotilla_node_agent.drivers.sim import SimDriver, SimNodeSpec
from flotilla_node_agent.executors.base import Executor
from flotilla_node_agent.journal import Journal
from flotilla_node_agent.node_process import agent_context, cluster_handle, make_executor, run_node
from flotilla_node_agent.settings import Settings
from flotilla_runtime.service import BusLogin, ServiceApp


def sim_driver(settings: Settings, executor: Executor | None) -> SimDriver:
    """The simulated node the settings describe (kept across restarts with `SIM_STATE_PATH`)."""
    spec = SimNodeSpec(
        cluster=settings.cluster_name or settings.cluster_id or "sim",
        name=settings.node_name,
        role=NodeRole(settings.sim_role),
        version=settings.sim_version,
        faults=tuple(f for f in settings.sim_faults.split(",") if f),
        crash_at=tuple(c for c in settings.sim_crash_at.split(",") if c),
        step_s=settings.sim_step_s,
    )
    state = Path(settings.sim_state_path) if settings.sim_state_path else None
    return SimDriver(spec, executor=executor, state_path=state, sigkill_on_crash=True)


class JournalCredentials:
    """The process is its cluster's only agent: the journal keeps the membership."""

    def __init__(self, app: ServiceApp[Settings], journal: Journal, uid: str) -> None:
        self.app, self.journal, self.uid = app, journal, uid

    async def read(self) -> tuple[str, str] | None:
        saved = await self.journal.membership(self.app.store, self.uid)
        if saved is None or not saved.credential or saved.state != ClusterState.APPROVED.value:
            return None
        return saved.cluster_id, saved.credential

    async def write(self, cluster_id: str, credential: str) -> None:
        """Nothing to do: the join saved the membership in the journal."""

    async def may_join(self) -> bool:
        return True


async def login(app: ServiceApp[Settings]) -> BusLogin:
    """Join as the one-node cluster (or read the membership the journal kept), then log in as the node."""
    settings = app.settings
    identity = node_process_identity(settings)
    driver = sim_driver(settings, None)

    async def own_node() -> list[NodeFacts]:
        return [await driver.facts()]

    try:
        return await login_with(app, JournalCredentials(app, Journal(), identity.uid), identity, own_node)
    finally:
        await driver.close()


async def run(app: ServiceApp[Settings], metrics: AgentMetrics) -> None:
    """Drive the simulated node; without a configured cluster id the process is also its cluster agent."""
    settings = app.settings
    ctx = agent_context(app, metrics)
    handle = cluster_handle(app)
    driver = sim_driver(settings, make_executor(settings))
    roles: list[Coroutine[Any, Any, None]] = []
    if not settings.cluster_id:

        async def own_node() -> list[NodeFacts]:
            return [await driver.facts()]

        # Logged in as a node (BUS_LOGIN=cluster), the cluster agent role opens its own `c.<cluster>`
        # connection; otherwise it shares the process's and tells the node agent the cluster id.
        routes = cluster_role(app)
        cluster = build_cluster_agent(
            node_process_identity(settings),
            settings.join_token,
            own_node,
            app.log,
            store=app.store,
            journal=ctx.journal,
            nc=None if routes else ctx.nc,
            handle=routes.cluster if routes else handle,
            connector=cluster_connector(app) if routes else None,
            workloads=SimApplyBackend(),
            js=app.js,
            instance_id=settings.instance_id,
        )
        roles.append(cluster.run())
    await run_node(app, ctx, handle, driver, roles)
