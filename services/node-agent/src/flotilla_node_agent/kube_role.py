"""The cluster agent role in Kubernetes: elected by a Lease, it joins and shares the cluster id."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from flotilla_contracts.v1.agent import NodeFacts
from flotilla_contracts.v1.registration import ClusterIdentity
from flotilla_node_agent.agent import AgentContext
from flotilla_node_agent.applier import ManifestApplier
from flotilla_node_agent.apply_backends import KubernetesApplyBackend
from flotilla_node_agent.bus_login import cluster_connector, cluster_role
from flotilla_node_agent.cluster_agent import ClusterAgent, ClusterHandle, NodesSource
from flotilla_node_agent.drivers.base import DriverUnavailable
from flotilla_node_agent.drivers.kube_lease import KubeLeaderElection
from flotilla_node_agent.drivers.kubernetes import KubernetesDriver, list_node_facts
from flotilla_node_agent.executors.base import Executor
from flotilla_runtime.service import ServiceApp

if TYPE_CHECKING:
    from flotilla_node_agent.app import Settings


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


async def run_kubernetes_roles(
    app: ServiceApp[Settings], api: Any, ctx: AgentContext, handle: ClusterHandle, executor: Executor | None
) -> tuple[KubernetesDriver, list[asyncio.Task[Any]]]:
    settings = app.settings
    driver = KubernetesDriver(api, settings.node_name, executor)
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
            agent = ClusterAgent(
                None if routes else ctx.nc,
                ctx.store,
                ctx.journal,
                identity,
                settings.join_token,
                node_lister(api),
                ClusterHandle(),
                app.log,
                connector=cluster_connector(app) if routes else None,
            )
            if routes is not None:
                routes.cluster = agent.handle
            if app.login is not None and app.login.credential:
                agent.credential = app.login.credential  # connected as the cluster: re-join with it
            # The elected cluster agent applies placed workloads with server-side apply.
            agent.workloads = ManifestApplier(
                ctx.js, ctx.store, KubernetesApplyBackend(api), app.log, instance_id=settings.instance_id
            )
            role = asyncio.create_task(agent.run())
            published = asyncio.create_task(_publish_when_approved(agent.handle, election))
            await election.keep_leadership()
            app.log.warning("lost the cluster agent lease; stepping down")
            for task in (role, published):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    return driver, [asyncio.create_task(follow()), asyncio.create_task(lead())]


async def _publish_when_approved(handle: ClusterHandle, election: KubeLeaderElection) -> None:
    cluster_id = await handle.wait()
    await election.publish_cluster_id(cluster_id)
