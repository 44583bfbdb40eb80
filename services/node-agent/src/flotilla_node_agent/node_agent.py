"""One node's agent: its command consumer and its heartbeats, over a connection and store it shares.

`flotilla sim` creates thousands of these over one NATS connection and one SQLite file; a DaemonSet pod
creates one. Everything per-node lives here; everything per-process lives in `AgentContext`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nats.aio.client import Client
from nats.js import JetStreamContext

from flotilla_contracts.ids import node_token
from flotilla_node_agent.agent_metrics import AgentMetrics
from flotilla_node_agent.cluster_agent import ClusterHandle
from flotilla_node_agent.commands import CommandConsumer
from flotilla_node_agent.drivers.base import NodeDriver
from flotilla_node_agent.heartbeats import HeartbeatSender, Interval
from flotilla_node_agent.journal import Journal
from flotilla_node_agent.steps import StepRunner
from flotilla_runtime.logs import get_logger
from flotilla_runtime.store import Store


@dataclass
class AgentContext:
    """What agents of one process share. `nc`/`js` are None when each cluster has its own connection
    (the `ClusterHandle`'s, on an authenticated bus)."""

    nc: Client | None
    js: JetStreamContext | None
    store: Store
    interval: Interval
    journal: Journal
    instance_id: str = ""
    ack_wait_s: float = 30.0
    fetch_timeout_s: float = 20.0
    verify_timeout_s: float = 300.0
    heartbeats: bool = True
    subscribe_gate: asyncio.Semaphore | None = None
    metrics: AgentMetrics | None = None  # the process's /metrics figures (a packed sim fleet has its own)


# Opens a node's own connection once its cluster is approved (the cluster id is the argument): on an
# authenticated bus each node speaks for itself (flotilla_node_agent.bus_login.connect_node).
NodeConnector = Callable[[str], Awaitable[Client]]


class NodeAgent:
    def __init__(
        self, ctx: AgentContext, driver: NodeDriver, cluster: ClusterHandle, connector: NodeConnector | None = None
    ) -> None:
        self.ctx, self.driver, self.cluster, self.connector = ctx, driver, cluster, connector
        self.nc: Client | None = None  # the connection it speaks over, once it runs
        self.node_id = node_token(driver.node_name)
        self.log = get_logger("flotilla.node-agent", node=self.node_id)
        self.consumer: CommandConsumer | None = None
        self.heartbeat: HeartbeatSender | None = None
        self.ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def run(self) -> None:
        """Wait for the cluster to be an approved member, then take commands and heartbeat until cancelled."""
        cluster_id = await self.cluster.wait()
        self.log = self.log.bind(cluster=cluster_id)
        ctx = self.ctx
        nc = await self.connector(cluster_id) if self.connector is not None else self.cluster.nc or ctx.nc
        self.nc = nc
        if nc is None:
            raise RuntimeError(f"no NATS connection for cluster {cluster_id}")
        shared = self.connector is None and self.cluster.nc is None and ctx.js is not None
        js = ctx.js if shared and ctx.js is not None else nc.jetstream()
        runner = StepRunner(ctx.store, ctx.journal, self.driver, self.log, ctx.verify_timeout_s, ctx.metrics)
        self.consumer = CommandConsumer(
            nc,
            js,
            ctx.store,
            runner,
            cluster_id,
            self.node_id,
            self.log,
            instance_id=ctx.instance_id,
            ack_wait_s=ctx.ack_wait_s,
            fetch_timeout_s=ctx.fetch_timeout_s,
            gate=ctx.subscribe_gate,
            metrics=ctx.metrics,
        )
        self.heartbeat = HeartbeatSender(nc, self.driver, cluster_id, self.node_id, ctx.interval, self.log, ctx.metrics)
        self._tasks = [asyncio.create_task(self.consumer.run(), name=f"commands-{self.node_id}")]
        if ctx.heartbeats:
            self._tasks.append(asyncio.create_task(self.heartbeat.run(), name=f"heartbeats-{self.node_id}"))
        self.ready.set()
        try:
            await asyncio.gather(*self._tasks)
        except Exception:
            self.log.exception("node agent stopped on an error")
            raise
        finally:
            for task in self._tasks:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
