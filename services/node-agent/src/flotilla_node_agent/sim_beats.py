"""The packed sim's batched heartbeats (`--batch-heartbeats`): a cluster's nodes in one HeartbeatBatch a round.

The batch goes over the cluster's own connection when it has one (its `c.<cluster>` identity, which may relay
its nodes' liveness), else over the shared connection; each node contributes the heartbeat its own sender
builds, once that node's agent runs.
"""

from __future__ import annotations

import functools

from nats.aio.client import Client

from flotilla_node_agent.agent_metrics import AgentMetrics
from flotilla_node_agent.cluster_agent import ClusterHandle
from flotilla_node_agent.heartbeats import HeartbeatSender, Interval, send_batches
from flotilla_node_agent.node_agent import NodeAgent
from flotilla_runtime.logs import BoundLogger


def running_senders(agents: list[NodeAgent]) -> list[HeartbeatSender]:
    return [agent.heartbeat for agent in agents if agent.heartbeat is not None]


def cluster_connection(handle: ClusterHandle, shared: Client | None) -> Client | None:
    return handle.nc or shared


async def run(
    handle: ClusterHandle,
    agents: list[NodeAgent],
    interval: Interval,
    log: BoundLogger,
    metrics: AgentMetrics | None,
    shared: Client | None,
) -> None:
    """Until cancelled: once the cluster is approved, its nodes' heartbeats every interval as batches."""
    senders = functools.partial(running_senders, agents)
    speaker = functools.partial(cluster_connection, handle, shared)
    await send_batches(handle.wait(), senders, interval, log, metrics, speaker)
