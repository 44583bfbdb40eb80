"""Logging in as the cluster on Kubernetes (`BUS_LOGIN=cluster`): the cluster credential Secret the Lease
holder writes and every agent reads, against kmock; and an agent without the Lease waiting for it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("kubernetes_asyncio", reason="kubernetes-asyncio is not installed (node-agent dependency)")

import kmock as km
from kubernetes_asyncio import client

from flotilla_contracts.v1.registration import ClusterIdentity
from flotilla_node_agent import bus_login
from flotilla_node_agent.bus_login import login_with
from flotilla_node_agent.drivers.kube_lease import CREDENTIAL_SECRET, KubeLeaderElection
from flotilla_node_agent.nodekey import node_seed
from flotilla_node_agent.run_kubernetes import SecretCredentials
from flotilla_runtime.migrations import load_migrations
from flotilla_runtime.store import Store

NAMESPACE = "flotilla"


@pytest.fixture
async def api(kmock: km.KubernetesEmulator) -> AsyncIterator[Any]:
    api = client.ApiClient(client.Configuration(host=str(kmock.url).rstrip("/")))
    yield api
    await api.close()


async def test_the_credential_secret_is_absent_then_written_then_replaced(kmock: Any, api: Any) -> None:
    election = KubeLeaderElection(api, NAMESPACE, "node-1")
    assert await election.read_credential() is None
    await election.publish_credential("edge-7f3a", "fc1.edge-7f3a.first")
    assert kmock.objects["v1/secrets", NAMESPACE, CREDENTIAL_SECRET]["type"] == "Opaque"
    assert await KubeLeaderElection(api, NAMESPACE, "node-2").read_credential() == ("edge-7f3a", "fc1.edge-7f3a.first")
    # A re-join after the Secret was lost elsewhere, or a rotated credential: written over, not refused.
    await election.publish_credential("edge-7f3a", "fc1.edge-7f3a.second")
    assert await election.read_credential() == ("edge-7f3a", "fc1.edge-7f3a.second")


async def test_an_agent_without_the_lease_waits_for_the_secret_and_logs_in_as_its_node(
    kmock: Any, api: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(bus_login, "WAIT_S", 0.05)

    class Follower(SecretCredentials):
        async def may_join(self) -> bool:
            return False  # another agent holds the Lease

    app: Any = SimpleNamespace(
        settings=SimpleNamespace(nats_url="tls://nats.flotilla.svc:4222", node_name="worker-2", join_token="tok"),
        log=logging.getLogger("test"),
        store=await Store.open(tmp_path / "node-agent.db", load_migrations("flotilla_node_agent", "node-agent")),
    )
    identity = ClusterIdentity(uid="u1", name="edge", kubernetes_version="v1.30.2")

    async def no_nodes() -> list[Any]:
        return []

    waiting = asyncio.create_task(
        login_with(app, Follower(KubeLeaderElection(api, NAMESPACE, "worker-2")), identity, no_nodes)
    )
    await asyncio.sleep(0.3)  # sleep: proves a negative (it does not log in for 0.3 s without the Secret)
    assert not waiting.done(), "it must wait for the Secret, not join or connect as anyone"
    await KubeLeaderElection(api, NAMESPACE, "worker-1").publish_credential("edge-7f3a", "fc1.edge-7f3a.x")
    login = await asyncio.wait_for(waiting, 5)
    # As its node: the cluster credential and the node's own key (made once, kept in its state database).
    assert login.url == "tls://nats.flotilla.svc:4222"
    assert login.connect["token"] == "c.edge-7f3a.worker-2 fc1.edge-7f3a.x"
    assert login.connect["inbox_prefix"] == "_INBOX.c.edge-7f3a.worker-2"
    assert login.connect["nkeys_seed_str"] == await node_seed(app.store, "worker-2")
    assert (login.cluster_id, login.credential, login.provision_streams) == ("edge-7f3a", "fc1.edge-7f3a.x", False)
    assert login.member, "a node answers nothing on the bus (no $SRV, no info)"
    await app.store.close()
