"""The packed sim's connections on an authenticated bus, and the outbox routes between them.

Each cluster agent speaks as `c.<cluster>` (inventory, applied reports, dead letters) and each node as
`c.<cluster>.<node>` with its own key from the journal (heartbeats, step events, its commands), as on real
clusters: the bus grants each identity only its own subjects (flotilla_contracts.permissions).
"""

from __future__ import annotations

import asyncio
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext

from flotilla_contracts.subjects import Entity
from flotilla_node_agent.bus_login import connect_node
from flotilla_node_agent.cluster_agent import ClusterAgent, ClusterHandle
from flotilla_node_agent.node_agent import NodeAgent, NodeConnector
from flotilla_node_agent.nodekey import node_seed
from flotilla_runtime.lifeline import Lifeline
from flotilla_runtime.logs import BoundLogger
from flotilla_runtime.store import Store


def node_connector(
    url: str, store: Store, cluster: ClusterAgent, node_id: str, link: Lifeline, log: BoundLogger
) -> NodeConnector:
    """Opens node `node_id`'s own connection once its cluster is approved, retrying with back-off while the bus
    refuses it (e.g. until the cluster agent's report put the node in the inventory)."""

    async def connect(cluster_id: str) -> Client:
        delay = 0.5
        while True:
            credential = cluster.credential
            try:
                if not credential:
                    raise nats.errors.NoServersError  # not approved yet: nothing to log in with
                seed = await node_seed(store, node_id)
                return await connect_node(url, cluster_id, node_id, credential, seed, link.name, link)
            except (OSError, nats.errors.Error, TimeoutError) as exc:
                log.warning("node %s could not log in (%s: %s); retrying in %.1fs", node_id, type(exc).__name__,
                            exc, delay)  # fmt: skip
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    return connect


class FleetRoutes:
    """The outbox relay's publisher when each cluster and node has its own connection: a node's step event goes
    out on that node's connection, anything else of a cluster (applied reports, dead letters) on its cluster
    agent's: the only ones the bus lets publish them."""

    def __init__(self, handles: list[ClusterHandle]) -> None:
        self.handles = handles
        self.nodes: dict[str, NodeAgent] = {}  # by node id (unique in a sim process: names carry the cluster)
        # One JetStream context per connection: each context subscribes its own reply inbox for pipelined
        # publishes, so a context per publish left one subscription behind per event published.
        self._contexts: dict[int, tuple[Client, JetStreamContext]] = {}

    def _connection(self, subject: str) -> Client:
        tokens = subject.split(".")  # fleet.v1.evt.<entity>.<cluster>...
        if tokens[3:4] == [Entity.NODE_STEP.value] and len(tokens) > 6:
            agent = self.nodes.get(tokens[5])
            if agent is None or agent.nc is None or agent.cluster.cluster_id != tokens[4]:
                raise nats.errors.ConnectionClosedError  # the node is not connected (yet): the relay retries
            return agent.nc
        at = 5 if tokens[3:4] == [Entity.DEAD_LETTER.value] else 4
        cluster = tokens[at] if len(tokens) > at + 1 else ""
        for handle in self.handles:
            if handle.cluster_id == cluster and handle.nc is not None:
                return handle.nc
        raise nats.errors.ConnectionClosedError

    async def publish_async(
        self,
        subject: str,
        payload: bytes = b"",
        wait_stall: float | None = None,
        stream: str | None = None,
        headers: dict[str, Any] | None = None,
        msg_ttl: float | None = None,
    ) -> asyncio.Future[Any]:
        js = self.context(self._connection(subject))
        return await js.publish_async(subject, payload, wait_stall, stream, headers)

    def context(self, nc: Client) -> JetStreamContext:
        """The connection's one JetStream context (made on first use)."""
        known = self._contexts.get(id(nc))
        if known is None or known[0] is not nc:
            known = self._contexts[id(nc)] = (nc, nc.jetstream())
        return known[1]
