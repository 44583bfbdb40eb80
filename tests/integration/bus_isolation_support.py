"""The bus isolation tests' fleet: `flotilla up` (module-scoped), clusters A, B and `gone` approved and one left
pending, and connections as a cluster agent, a node (credential and key) or a joining agent, each counting the
denials the server sends it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nkeys
import pytest
from integration_support import WatchedConnection, connect_watched, send_join

from flotilla_client import runfile
from flotilla_client.client import FlotillaClient
from flotilla_client.natsserver import free_port
from flotilla_contracts import permissions
from flotilla_contracts.subjects import Service
from flotilla_contracts.v1.agent import NodeFacts
from flotilla_contracts.v1.common import NodeRole
from flotilla_contracts.v1.registration import (
    ApproveClusterRequest,
    ClusterIdentity,
    ClusterReply,
    CreateTokenReply,
    CreateTokenRequest,
    JoinReply,
    JoinRequest,
)
from flotilla_runtime import logins
from flotilla_runtime.bus import with_user

FLOTILLA = str(Path(sys.executable).parent / "flotilla")
NODE = "n1"
OTHER = "n2"  # a second node of every cluster
DENIED = {"count": 0}  # attempts denied across the module, printed for the report


class Agent(WatchedConnection):
    """A connection as one identity; the denials it sees are counted for the report."""

    async def denied(self, what: str, within_s: float = 3.0) -> bool:
        found = await super().denied(what, within_s)
        DENIED["count"] += found
        return found


async def connect(url: str, user: str, password: str) -> Agent:
    watched = await connect_watched(with_user(url, user, password))
    return Agent(watched.nc, watched.errors)


def new_seed() -> str:
    return str(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode())


async def connect_as_node(fleet: Fleet, name: str, node: str, seed: str | None = None) -> Agent:
    """Log in as node `node` of cluster `name` as its agent does: the cluster credential and the node's key."""
    cluster_id = fleet.ids[name]
    user = permissions.cluster_user(cluster_id, node)
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await logins.connect(
        fleet.plain_url, error_cb=on_error, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=10,
        nkeys_seed_str=seed or fleet.seeds.setdefault(f"{name}/{node}", new_seed()),
        token=permissions.node_login_token(user, fleet.clusters[name]), inbox_prefix=permissions.inbox_prefix(user),
    )  # fmt: skip
    return Agent(nc, errors)


@dataclass
class Fleet:
    state: Path
    admin_url: str
    plain_url: str
    clusters: dict[str, str] = field(default_factory=dict)  # cluster name -> credential
    ids: dict[str, str] = field(default_factory=dict)  # cluster name -> cluster id
    seeds: dict[str, str] = field(default_factory=dict)  # "<cluster name>/<node>" -> the node's key


async def join(fleet: Fleet, token: str, name: str) -> JoinReply:
    """Join as a new agent would: connect as `join.<nonce>` with the token, send the join command."""
    agent = await connect(fleet.plain_url, permissions.join_user(uuid.uuid4().hex), token)
    try:
        request = JoinRequest(
            request_id=f"join-{name}",
            token=token,
            identity=ClusterIdentity(uid=f"uid-{name}", name=name, kubernetes_version="v1.29.6"),
            nodes=[
                NodeFacts(node_id=node, node_name=node, role=NodeRole.WORKER, kubelet_version="v1.29.6")
                for node in (NODE, OTHER)
            ],
        )
        return await send_join(agent.nc, request)
    finally:
        await agent.nc.close()


def isolated_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """`flotilla up` in a fresh folder with the clusters `enrol` makes; `flotilla down` after (a module's
    fixture: `yield from isolated_fleet(tmp_path_factory)`)."""
    state = tmp_path_factory.mktemp("isolation") / ".flotilla"
    port = free_port()
    up = subprocess.run(
        [FLOTILLA, "--state-dir", str(state), "up", "--port", str(port), "--monitor-port", "0"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert up.returncode == 0, up.stderr
    try:
        admin_url = runfile.server_url(state)
        assert admin_url and "admin:" in admin_url, "flotilla up must record the admin URL with its credentials"
        fleet = Fleet(state, admin_url, f"nats://127.0.0.1:{port}")
        asyncio.run(enrol(fleet))
        yield fleet
    finally:
        subprocess.run([FLOTILLA, "--state-dir", str(state), "down"], capture_output=True, timeout=60)
        print(f"\nbus isolation: {DENIED['count']} attempts denied by the server")


async def enrol(fleet: Fleet) -> None:
    """Clusters A, B and `gone` joined and approved, one left pending; their credentials kept."""
    async with FlotillaClient(fleet.admin_url) as admin:
        token = await admin.request(
            Service.REGISTRATION, "tokens.create", CreateTokenRequest(max_uses=10), CreateTokenReply
        )
        for name in ("iso-a", "iso-b", "iso-gone"):
            joined = await join(fleet, token.token, name)
            assert joined.credential
            await admin.request(
                Service.REGISTRATION, "clusters.approve", ApproveClusterRequest(cluster_id=joined.cluster_id),
                ClusterReply,
            )  # fmt: skip
            fleet.clusters[name], fleet.ids[name] = joined.credential, joined.cluster_id
        pending = await join(fleet, token.token, "iso-pending")
        assert pending.credential
        fleet.clusters["iso-pending"], fleet.ids["iso-pending"] = pending.credential, pending.cluster_id
        fleet.clusters["token"] = token.token
