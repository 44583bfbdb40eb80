"""Building one agent process from its settings: driver, executor, cluster role, host keys."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flotilla_contracts.v1.common import NodeRole
from flotilla_node_agent.agent import AgentContext, NodeAgent
from flotilla_node_agent.applier import ManifestApplier
from flotilla_node_agent.apply_backends import SimApplyBackend
from flotilla_node_agent.bus_login import cluster_connector, cluster_role, sim_identity
from flotilla_node_agent.cluster_agent import ClusterAgent, ClusterHandle
from flotilla_node_agent.drivers.base import NodeDriver
from flotilla_node_agent.drivers.sim import SimDriver, SimNodeSpec
from flotilla_node_agent.executors.base import CommandRunner, Executor
from flotilla_node_agent.executors.hostprep import EtcdSnapshots, PackageSource
from flotilla_node_agent.executors.kubeadm import KubeadmExecutor, PackageManager
from flotilla_node_agent.executors.script import ScriptExecutor
from flotilla_node_agent.heartbeats import Interval
from flotilla_node_agent.hostkeys import HostKeysReconciler
from flotilla_node_agent.journal import Journal
from flotilla_runtime.service import ServiceApp

if TYPE_CHECKING:
    from flotilla_node_agent.app import Settings


def make_executor(settings: Settings) -> Executor | None:
    runner = CommandRunner.from_setting(settings.command_prefix, settings.command_timeout_s)
    if settings.executor == "kubeadm":
        snapshots = EtcdSnapshots(settings.etcd_snapshot_dir, settings.etcd_snapshots_kept)
        return KubeadmExecutor(
            runner,
            PackageManager(settings.package_manager),
            PackageSource(settings.package_source),
            settings.package_repo_file,
            snapshots if settings.etcd_snapshot_dir else None,
        )
    if settings.executor == "script":
        return ScriptExecutor(runner, settings.upgrade_script)
    return None


def sim_driver(settings: Settings, executor: Executor | None) -> SimDriver:
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


async def build_and_run(app: ServiceApp[Settings]) -> None:
    settings = app.settings
    nc = app.broker.connection
    interval = Interval(settings.heartbeat_interval_s)
    ctx = AgentContext(
        nc=nc,
        js=app.js,
        store=app.store,
        interval=interval,
        journal=Journal(),
        instance_id=settings.instance_id,
        ack_wait_s=settings.ack_wait_s,
        fetch_timeout_s=settings.fetch_timeout_s,
        verify_timeout_s=settings.verify_timeout_s,
    )
    executor = make_executor(settings)
    tasks: list[asyncio.Task[Any]] = [asyncio.create_task(interval.keep_fresh(nc))]
    member = app.login is not None and app.login.member
    handle = ClusterHandle(app.login.cluster_id if member and app.login else settings.cluster_id)
    driver: NodeDriver
    if settings.driver == "sim":
        driver = sim_driver(settings, executor)
        if not settings.cluster_id:
            identity = sim_identity(settings)

            async def own_node() -> list[Any]:
                return [await driver.facts()]

            # Logged in as a node (BUS_LOGIN=cluster), the cluster agent role opens its own `c.<cluster>`
            # connection; otherwise it shares the process's and tells the node agent the cluster id.
            role = cluster_role(app)
            cluster = ClusterAgent(
                None if role else nc,
                app.store,
                ctx.journal,
                identity,
                settings.join_token,
                own_node,
                role.cluster if role else handle,
                app.log,
                connector=cluster_connector(app) if role else None,
            )
            cluster.workloads = ManifestApplier(
                app.js, app.store, SimApplyBackend(), app.log, instance_id=settings.instance_id
            )
            tasks.append(asyncio.create_task(cluster.run()))
    else:
        from flotilla_node_agent.drivers.kubernetes import api_client
        from flotilla_node_agent.kube_role import run_kubernetes_roles

        api = await api_client(settings.kubeconfig)
        driver, role_tasks = await run_kubernetes_roles(app, api, ctx, handle, executor)
        tasks += role_tasks
    keys = authorized_keys_path(settings)
    agent = NodeAgent(ctx, driver, handle)
    tasks.append(asyncio.create_task(agent.run()))
    if keys is not None:

        async def host_keys() -> None:
            cluster_id = await handle.wait()
            await HostKeysReconciler(nc, app.js, cluster_id, keys, app.log).run()

        tasks.append(asyncio.create_task(host_keys()))
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await driver.close()


def authorized_keys_path(settings: Settings) -> Path | None:
    from flotilla_node_agent.app import authorized_keys

    return authorized_keys(settings)
