"""The agent with the kubernetes driver (`FLOTILLA_NODE_AGENT_DRIVER=kubernetes`): one agent per node (a
DaemonSet); the holder of a Lease is the cluster agent, joins and shares the cluster id and credential. Its login
(`BUS_LOGIN=cluster`) reads that credential from a Secret; its run drives the node through the API server.
Only this mode loads kubernetes_asyncio (app.py imports it when the settings choose it)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

from flotilla_contracts.v1.agent import NodeFacts
from flotilla_contracts.v1.registration import ClusterIdentity
from flotilla_node_agent.agent_metrics import AgentMetrics
from flotilla_node_agent.apply_backends import KubernetesApplyBackend
from flotilla_node_agent.bus_login import cluster_connector, cluster_role, login_with
from flotilla_node_agent.cluster_agent import ClusterHandle, NodesSource
from flotilla_node_agent.cluster_setup import build_cluster_agent
from flotilla_node_agent.drivers.base import DriverUnavailable
from flotilla_node_agent.drivers.kube_lease import KubeLeaderElection
from flotilla_node_agent.drivers.kubernetes import KubernetesDriver, api_client, list_node_facts
from flotilla_node_agent.node_agent import AgentContext
from flotilla_node_agent.node_process import agent_context, cluster_handle, make_executor, run_node
from flotilla_node_agent.settings import Settings
from flotilla_runtime.service import BusLogin, ServiceApp


async def cluster_identity(
    settings: Settings, election: KubeLeaderElection, driver: KubernetesDriver
) -> ClusterIdentity:
    """The identity the cluster joins with: kube-system's UID, the configured name, this node's kubelet."""
    return ClusterIdentity(
        uid=await election.cluster_uid(),
        name=settings.cluster_name or "cluster",
        kubernetes_version=(await driver.facts()).kubelet_version,
    )


def node_lister(api: Any) -> NodesSource:
    """Every node's facts for the join and the node reports; none while the API server cannot be read."""

    async def nodes() -> list[NodeFacts]:
        try:
            return list(await list_node_facts(api))
        except DriverUnavailable:
            return []

    return nodes


def kubernetes_roles(
    app: ServiceApp[Settings], api: Any, ctx: AgentContext, handle: ClusterHandle, driver: KubernetesDriver
) -> list[Coroutine[Any, Any, None]]:
    """Every agent follows the cluster id the cluster agent publishes; the Lease holder is that cluster agent."""
    settings = app.settings
    election = KubeLeaderElection(api, settings.namespace, settings.node_name)

    async def follow() -> None:
        """Every agent: learn the cluster id the cluster agent published."""
        while not handle.approved.is_set():
            login = app.login.cluster_id if app.login else ""
            cluster_id = settings.cluster_id or login or await election.read_cluster_id()
            if cluster_id:
                handle.approve(cluster_id)
                return
            await asyncio.sleep(5.0)

    async def lead() -> None:
        """The Lease holder joins the fleet and reports nodes until it loses the Lease, then waits again."""
        if not settings.join_token:
            return
        while True:
            await election.wait_leadership()
            app.log.info("holding the cluster agent lease")
            identity = await cluster_identity(settings, election, driver)
            # Logged in as a node, the role opens its own `c.<cluster>` connection (the node's may not join,
            # report nodes or apply workloads); its applied reports leave over it (MemberRoutes).
            routes = cluster_role(app)
            # The elected cluster agent applies placed workloads with server-side apply.
            agent = build_cluster_agent(
                identity,
                settings.join_token,
                node_lister(api),
                app.log,
                store=ctx.store,
                journal=ctx.journal,
                nc=None if routes else ctx.nc,
                connector=cluster_connector(app) if routes else None,
                workloads=KubernetesApplyBackend(api),
                js=ctx.js,
                instance_id=settings.instance_id,
            )
            if routes is not None:
                routes.cluster = agent.handle
            if app.login is not None and app.login.credential:
                agent.credential = app.login.credential  # connected as the cluster: re-join with it
            role = asyncio.create_task(agent.run())
            published = asyncio.create_task(_publish_when_approved(agent.handle, election))
            await election.keep_leadership()
            app.log.warning("lost the cluster agent lease; stepping down")
            for task in (role, published):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    return [follow(), lead()]


class SecretCredentials:
    """The `flotilla-cluster-credential` Secret, written by the Lease holder, read by every agent."""

    def __init__(self, election: KubeLeaderElection) -> None:
        self.election = election

    async def read(self) -> tuple[str, str] | None:
        return await self.election.read_credential()

    async def write(self, cluster_id: str, credential: str) -> None:
        await self.election.publish_credential(cluster_id, credential)

    async def may_join(self) -> bool:
        return await self.election.try_acquire()


async def login(app: ServiceApp[Settings]) -> BusLogin:
    """Wait for the cluster credential the Lease holder shares (joining when this agent holds the Lease), then
    log in as the node."""
    settings = app.settings
    api = await api_client(settings.kubeconfig)
    try:
        election = KubeLeaderElection(api, settings.namespace, settings.node_name)
        identity = await cluster_identity(settings, election, KubernetesDriver(api, settings.node_name, None))
        return await login_with(app, SecretCredentials(election), identity, node_lister(api))
    finally:
        await api.close()


async def run(app: ServiceApp[Settings], metrics: AgentMetrics) -> None:
    """Drive this Kubernetes node; follow (or, holding the Lease, be) the cluster agent."""
    settings = app.settings
    ctx = agent_context(app, metrics)
    handle = cluster_handle(app)
    api = await api_client(settings.kubeconfig)
    driver = KubernetesDriver(api, settings.node_name, make_executor(settings), metrics=metrics)
    await run_node(app, ctx, handle, driver, kubernetes_roles(app, api, ctx, handle, driver))


async def _publish_when_approved(handle: ClusterHandle, election: KubeLeaderElection) -> None:
    cluster_id = await handle.wait()
    await election.publish_cluster_id(cluster_id)
