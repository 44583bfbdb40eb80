"""What every node-agent process runs, whatever its mode: the executor its settings choose, the node's agent,
the heartbeat interval and the host keys; a mode (run_sim, run_kubernetes) brings its driver and its cluster
agent role."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

from flotilla_node_agent.agent_metrics import AgentMetrics
from flotilla_node_agent.cluster_agent import ClusterHandle
from flotilla_node_agent.drivers.base import NodeDriver
from flotilla_node_agent.executors.base import CommandRunner, Executor
from flotilla_node_agent.executors.hostprep import EtcdSnapshots, PackageSource
from flotilla_node_agent.executors.kubeadm import KubeadmExecutor, PackageManager
from flotilla_node_agent.executors.script import ScriptExecutor
from flotilla_node_agent.heartbeats import Interval
from flotilla_node_agent.hostkeys import HostKeysReconciler
from flotilla_node_agent.journal import Journal
from flotilla_node_agent.node_agent import AgentContext, NodeAgent
from flotilla_node_agent.settings import Settings, authorized_keys
from flotilla_runtime.service import ServiceApp


def make_executor(settings: Settings) -> Executor | None:
    """The executor of `FLOTILLA_NODE_AGENT_EXECUTOR`; None: the sim driver simulates the upgrade."""
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


def agent_context(app: ServiceApp[Settings], metrics: AgentMetrics | None = None) -> AgentContext:
    """The process's shared pieces: its connection, store, journal, heartbeat interval and /metrics figures."""
    settings = app.settings
    return AgentContext(
        nc=app.broker.connection,
        js=app.js,
        store=app.store,
        interval=Interval(settings.heartbeat_interval_s),
        journal=Journal(),
        instance_id=settings.instance_id,
        ack_wait_s=settings.ack_wait_s,
        fetch_timeout_s=settings.fetch_timeout_s,
        verify_timeout_s=settings.verify_timeout_s,
        metrics=metrics,
    )


def cluster_handle(app: ServiceApp[Settings]) -> ClusterHandle:
    """The cluster id as far as it is known at start: the login's (as a node of it) or the configured one."""
    member = app.login is not None and app.login.member
    return ClusterHandle(app.login.cluster_id if member and app.login else app.settings.cluster_id)


async def run_node(
    app: ServiceApp[Settings],
    ctx: AgentContext,
    handle: ClusterHandle,
    driver: NodeDriver,
    roles: list[Coroutine[Any, Any, None]],
) -> None:
    """Run the node's agent, its host keys and the mode's `roles` until one fails or this is cancelled; then
    stop them all and close the driver."""
    nc = app.broker.connection
    tasks: list[asyncio.Task[Any]] = [asyncio.create_task(ctx.interval.keep_fresh(nc))]
    tasks += [asyncio.create_task(role) for role in roles]
    tasks.append(asyncio.create_task(NodeAgent(ctx, driver, handle).run()))
    keys = authorized_keys(app.settings)
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
