"""Connecting as the cluster (`FLOTILLA_NODE_AGENT_BUS_LOGIN=cluster`): on an authenticated bus a node's
agent is `c.<cluster>.<node>` with its cluster's credential and its node's own key (flotilla_node_agent.nodekey:
it signs the server's nonce), never a service user. That login speaks for the node only and answers nothing
(no `$SRV` discovery, no `info`); the cluster agent role, wherever it runs, opens its own `c.<cluster>`
connection, and applied reports leave over it (`MemberRoutes`).

What every mode shares: each mode's login (run_sim.login, run_kubernetes.login) calls `login_with` with its
`Credentials` source: the journal (the sim driver: each process is a one-node cluster) or the
`flotilla-cluster-credential` Secret (the kubernetes driver: the Lease holder joins and writes it; every agent
of the cluster reads it). Until there is one, the agent that may join (sim: itself;
kubernetes: the Lease holder) joins with the join token as `join.<nonce>` and waits for approval, and the
others wait for the Secret. The bus grants `join.<nonce>` the join command only; see
flotilla_contracts.permissions.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Protocol

import nats
import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext

from flotilla_contracts import permissions
from flotilla_contracts.ids import node_token
from flotilla_contracts.subjects import EVT_PREFIX, Entity
from flotilla_contracts.v1.registration import ClusterIdentity
from flotilla_node_agent.cluster_agent import ClusterHandle, Connector, NodesSource
from flotilla_node_agent.cluster_setup import build_cluster_agent
from flotilla_node_agent.journal import Journal
from flotilla_node_agent.nodekey import node_seed
from flotilla_node_agent.settings import Settings
from flotilla_runtime.lifeline import Lifeline
from flotilla_runtime.natsconn import connect_options, with_user, without_user
from flotilla_runtime.service import BusLogin, ServiceApp

WAIT_S = 5.0


async def connect_as(url: str, user: str, password: str, name: str, lifeline: Lifeline | None = None) -> Client:
    """A connection to `url` as `user` (a cluster, or a joining agent) that reconnects forever, through
    expired grants and refusals too (`lifeline` follows it; see flotilla_runtime.lifeline)."""
    target = with_user(url, user, password)
    link = lifeline or Lifeline(name)
    try:
        return await link.connect(
            target,
            name=name,
            connect_timeout=10,  # the bus asks registration (auth callout) before it answers
            pending_size=64 * 1024 * 1024,
            **connect_options(target),
        )
    except (OSError, nats.errors.Error, TimeoutError) as exc:
        link.failed(exc)
        raise


def node_options(cluster_id: str, node: str, credential: str, seed: str) -> dict[str, Any]:
    """nats-py connect options of a node's login: its key signs the server's nonce, the token names the user
    and carries the cluster credential, and the inbox is the node's own."""
    user = permissions.cluster_user(cluster_id, node)
    return {
        "nkeys_seed_str": seed,
        "token": permissions.node_login_token(user, credential),
        "inbox_prefix": permissions.inbox_prefix(user),
    }


async def connect_node(
    url: str, cluster_id: str, node: str, credential: str, seed: str, name: str, lifeline: Lifeline | None = None
) -> Client:
    """A connection as node `node` of `cluster_id` (see `node_options`) that reconnects forever, like `connect_as`."""
    target = without_user(url)
    link = lifeline or Lifeline(name)
    try:
        return await link.connect(
            target,
            name=name,
            connect_timeout=10,
            pending_size=64 * 1024 * 1024,
            **(connect_options(target) | node_options(cluster_id, node, credential, seed)),
        )
    except (OSError, nats.errors.Error, TimeoutError) as exc:
        link.failed(exc)
        raise


APPLIED_PREFIX = f"{EVT_PREFIX}.{Entity.APPLIED.value}."


class MemberRoutes:
    """The outbox relay's publisher in a node's process: applied reports leave over the cluster agent's own
    connection (only `c.<cluster>` may publish them; they wait while this process does not hold that role),
    everything else (step events, dead letters) over the node's."""

    def __init__(self) -> None:
        self.node_js: JetStreamContext | None = None
        self.cluster = ClusterHandle()  # the cluster agent's, when this process runs it

    def __call__(self, js: JetStreamContext) -> MemberRoutes:
        self.node_js = js
        return self

    async def publish_async(
        self,
        subject: str,
        payload: bytes = b"",
        wait_stall: float | None = None,
        stream: str | None = None,
        headers: dict[str, Any] | None = None,
        msg_ttl: float | None = None,
    ) -> asyncio.Future[Any]:
        js = self.node_js
        if subject.startswith(APPLIED_PREFIX):
            nc = self.cluster.nc
            js = None if nc is None or nc.is_closed else nc.jetstream()
        if js is None:
            raise nats.errors.ConnectionClosedError
        return await js.publish_async(subject, payload, wait_stall, stream, headers)


def cluster_role(app: ServiceApp[Settings]) -> MemberRoutes | None:
    """The routes of a node's login, whose `cluster` handle the cluster agent role fills; None when the
    process is not logged in as a node (an open bus, or the node-agent service user)."""
    publisher = app.login.publisher if app.login is not None else None
    return publisher if isinstance(publisher, MemberRoutes) else None


def cluster_connector(app: ServiceApp[Settings]) -> Connector:
    """How the cluster agent role opens its own connection (as `c.<cluster>`, or `join.<nonce>` to join)."""
    settings = app.settings

    async def connect(user: str, password: str) -> Client:
        return await connect_as(settings.nats_url, user, password, f"flotilla-cluster-agent-{settings.instance_id}")

    return connect


class Credentials(Protocol):
    """Where a cluster's id and credential are kept, and whether this agent is the one to join."""

    async def read(self) -> tuple[str, str] | None: ...

    async def write(self, cluster_id: str, credential: str) -> None: ...

    async def may_join(self) -> bool: ...


async def join(app: ServiceApp[Settings], identity: ClusterIdentity, nodes: NodesSource) -> tuple[str, str]:
    """Join with the token until the cluster is approved; (cluster id, credential). Raises JoinRefused."""
    settings = app.settings

    async def connector(user: str, password: str) -> Client:
        return await connect_as(settings.nats_url, user, password, f"flotilla-node-agent-{settings.instance_id}")

    agent = build_cluster_agent(
        identity, settings.join_token, nodes, app.log, store=app.store, journal=Journal(), connector=connector
    )
    try:
        cluster_id = await agent.join()
    finally:
        if agent.nc is not None:
            with contextlib.suppress(Exception):
                await agent.nc.close()
    assert agent.credential is not None  # approved: registration issued it
    return cluster_id, agent.credential


async def login_with(
    app: ServiceApp[Settings], credentials: Credentials, identity: ClusterIdentity, nodes: NodesSource
) -> BusLogin:
    """Wait for the cluster's credential (joining when this agent may), then log in as this node."""
    settings = app.settings
    node = node_token(settings.node_name)
    waiting_logged = False
    while True:
        saved = await credentials.read()
        if saved is not None:
            cluster_id, credential = saved
            user = permissions.cluster_user(cluster_id, node)
            seed = await node_seed(app.store, node)
            app.log.info("connecting to the bus as %s", user, extra={"cluster": cluster_id, "node": node})
            return BusLogin(
                url=without_user(settings.nats_url),
                provision_streams=False,
                cluster_id=cluster_id,
                credential=credential,
                member=True,
                connect=node_options(cluster_id, node, credential, seed),
                publisher=MemberRoutes(),
            )
        if settings.join_token and await credentials.may_join():
            cluster_id, credential = await join(app, identity, nodes)
            await credentials.write(cluster_id, credential)
            continue
        if not waiting_logged:
            app.log.info("waiting for the cluster agent to join the fleet and share the cluster credential")
            waiting_logged = True
        await asyncio.sleep(WAIT_S)
