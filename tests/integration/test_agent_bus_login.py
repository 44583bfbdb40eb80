"""A node-agent process on `flotilla up`'s authenticated bus with `FLOTILLA_NODE_AGENT_BUS_LOGIN=cluster`:
it knows only the server address and a join token, joins as `join.<nonce>`, waits for approval, then
connects as `c.<cluster>.<node>` with the credential and works as that cluster only: heartbeats, its command
consumer, node-step events through its outbox. Restarted, it logs in with the saved credential at once.
The server's monitoring endpoint (`/connz?auth=true`) shows which user each connection is."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from flotilla_client import localfleet, runfile
from flotilla_client.client import FlotillaClient
from flotilla_client.natsserver import free_port
from flotilla_contracts import permissions, subjects
from flotilla_contracts.ids import node_token
from flotilla_contracts.subjects import Service
from flotilla_contracts.v1.agent import StepKind, StepOutcome
from flotilla_contracts.v1.registration import (
    ApproveClusterRequest,
    ClusterReply,
    ClusterState,
    CreateTokenReply,
    CreateTokenRequest,
    ListClustersReply,
    ListClustersRequest,
)
from flotilla_runtime import logins
from flotilla_runtime.bus import connect_options
from flotilla_testkit import eventually

from .node_agent_support import Watch, send, step_command

pytestmark = pytest.mark.integration
FLOTILLA = str(Path(sys.executable).parent / "flotilla")
NODE_NAME = "edge-login-1"


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[Path, str, int]]:
    """`flotilla up` (auth on): its state folder, the server address without credentials, the monitor port."""
    state = tmp_path / ".flotilla"
    port, monitor = free_port(), free_port()
    up = subprocess.run(
        [FLOTILLA, "--state-dir", str(state), "up", "--port", str(port), "--monitor-port", str(monitor)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert up.returncode == 0, up.stderr
    try:
        yield state, f"nats://127.0.0.1:{port}", monitor
    finally:
        subprocess.run([FLOTILLA, "--state-dir", str(state), "down"], capture_output=True, timeout=60)


class Agent:
    """The node-agent service as its own process, told only the server address and the join token."""

    def __init__(self, url: str, home: Path, token: str, monitor: int) -> None:
        self.url, self.home, self.token, self.monitor = url, home, token, monitor
        self.process: subprocess.Popen[bytes] | None = None
        self.instance = ""

    def start(self) -> None:
        settings = {
            "bus_login": "cluster", "node_name": NODE_NAME, "join_token": self.token, "driver": "sim",
            "heartbeat_interval_s": "0.5",
        }  # fmt: skip
        entry, self.process = localfleet.start_service(Service.NODE_AGENT, self.home, self.url, settings)
        self.instance = entry.instance_id

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def users(self) -> list[str]:
        """The user of every connection this process has open (connection names carry its instance id)."""
        url = f"http://127.0.0.1:{self.monitor}/connz?auth=true&limit=1024"
        with urllib.request.urlopen(url, timeout=5) as answer:
            connz = json.load(answer)
        mine = [c for c in connz.get("connections") or [] if self.instance in c.get("name", "")]
        return [c.get("authorized_user", "") for c in mine]

    def subscriptions(self) -> list[str]:
        """Every subject this process's connections subscribe to."""
        url = f"http://127.0.0.1:{self.monitor}/connz?subs=true&limit=1024"
        with urllib.request.urlopen(url, timeout=5) as answer:
            connz = json.load(answer)
        mine = [c for c in connz.get("connections") or [] if self.instance in c.get("name", "")]
        return [subject for c in mine for subject in c.get("subscriptions_list") or []]

    def log(self) -> str:
        return (self.home / "logs" / "node-agent.log").read_text()


async def test_a_node_agent_joins_then_speaks_only_as_its_cluster(fleet: tuple[Path, str, int], tmp_path: Path) -> None:
    state, url, monitor = fleet
    admin_url = runfile.server_url(state)
    assert admin_url
    home = tmp_path / "agent-home"  # its own state folder: no bus.json there, so no service password
    node = node_token(NODE_NAME)
    async with FlotillaClient(admin_url) as admin:
        token = await admin.request(Service.REGISTRATION, "tokens.create", CreateTokenRequest(), CreateTokenReply)
        agent = Agent(url, home, token.token, monitor)
        agent.start()
        try:
            cluster_id = ""

            async def pending() -> bool:
                nonlocal cluster_id
                listed = await admin.request(
                    Service.REGISTRATION, "clusters.list", ListClustersRequest(), ListClustersReply
                )
                found = [c for c in listed.clusters if c.identity.name == NODE_NAME and c.state is ClusterState.PENDING]
                cluster_id = found[0].cluster_id if found else ""
                return bool(found)

            await eventually(pending, "the agent's join (cluster Pending)", timeout_s=30, every_s=0.2)
            # Pending: it holds only a join connection (or none between retries), never a service user.
            assert all(u.startswith(permissions.JOIN_USER_PREFIX + ".") for u in agent.users()), agent.users()

            nc = await logins.connect(admin_url, **connect_options(admin_url))
            beats = await nc.subscribe(subjects.heartbeat(cluster_id, node))
            watch = Watch()
            await watch.start(nc)
            await admin.request(
                Service.REGISTRATION, "clusters.approve", ApproveClusterRequest(cluster_id=cluster_id), ClusterReply
            )
            await beats.next_msg(timeout=30)  # heartbeats flow once approved

            # The node speaks as itself (with its key); the cluster agent role, run by this process too (the
            # sim driver is a one-node cluster), as the cluster on a connection of its own.
            login = permissions.cluster_user(cluster_id, node)
            users_now = sorted([login, permissions.cluster_user(cluster_id)])

            async def logged_in() -> bool:
                return sorted(agent.users()) == users_now

            await eventually(logged_in, f"a connection as {login}", timeout_s=10, every_s=0.2)

            # Its command consumer and outbox work under the cluster's grant: a step runs and is reported.
            await send(nc, step_command(StepKind.CORDON, cluster=cluster_id, node=node))
            await watch.until(lambda: watch.final(StepKind.CORDON), within_s=20)
            assert watch.final(StepKind.CORDON)[0].outcome is StepOutcome.SUCCEEDED
            assert "Permissions Violation" not in agent.log()
            # A member answers nothing: no discovery ($SRV) and no service command (info) subscriptions.
            served = [s for s in agent.subscriptions() if s.startswith(("$SRV", subjects.CMD_PREFIX))]
            assert served == [], served

            # Restarted, it logs in with the credential it kept: no join connection, heartbeats at once.
            agent.stop()
            agent.start()
            await eventually(logged_in, f"{login} again after a restart", timeout_s=20, every_s=0.2)
            assert agent.log().count(f"connecting to the bus as {login}") == 2
            await beats.next_msg(timeout=10)
            await nc.close()
        finally:
            agent.stop()
