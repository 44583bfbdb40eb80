"""`flotilla up --bus-servers 2`: two nats-servers in one NATS cluster, a simulated fleet on the second.

The services and JetStream's streams are on the first server; the sim's cluster agents and nodes connect to the
second (`flotilla sim --bus-server 2`). So each of these is the cluster at work: a CONNECT on the second server
reaching registration's auth callout on the first across the route, heartbeats crossing to the heartbeat service,
the agents' commands coming from consumers on the first server's streams. Restarting the second server brings its
agents back to it (servers do not advertise each other to clients: connections stay where they were put).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from flotilla_client import runfile
from flotilla_client.natsserver import STORE_MEMORY_LIMIT_ENV, free_port
from flotilla_testkit import eventually_sync

pytestmark = pytest.mark.integration

FLOTILLA = str(Path(sys.executable).parent / "flotilla")
CLUSTERS, NODES = 2, 2
LOOK = {"timeout_s": 90.0, "every_s": 0.5}
SERVERS_LIMIT, STORE_LIMIT = "3000MiB", "4000MiB"
ENDED = ("Succeeded", "CompletedWithFailures", "Aborted", "RolledBack", "Frozen")


@dataclass
class Fleet:
    state: Path

    def run(
        self, *args: str, timeout: float = 120, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        argv = [FLOTILLA, "--state-dir", str(self.state), *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)

    def ok(self, *args: str, env: dict[str, str] | None = None) -> str:
        done = self.run(*args, env=env)
        assert done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-2000:])
        return done.stdout

    def monitor(self, server: int, path: str) -> dict[str, Any]:
        """nats-server's monitoring endpoint `path` (connz, jsz...) of the `server`-th server (1-based)."""
        info = runfile.load(self.state)
        assert info is not None
        url = runfile.bus_servers(info)[server - 1].monitor_url
        with urllib.request.urlopen(f"{url}/{path}", timeout=5) as answer:
            return json.load(answer)  # type: ignore[no-any-return]

    def sim_connections(self, server: int) -> set[str]:
        """Names of the sim's connections (cluster agents and nodes) on the `server`-th server."""
        connz = self.monitor(server, "connz?limit=1000")
        return {c.get("name", "") for c in connz["connections"] if c.get("name", "").startswith("flotilla-sim-two-")}

    def ready_nodes(self) -> int:
        return int(json.loads(self.ok("health", "-o", "json")).get("nodes", {}).get("ready", 0))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path_factory.mktemp("bus-cluster") / ".flotilla")
    limits = {"GOMEMLIMIT": SERVERS_LIMIT, STORE_MEMORY_LIMIT_ENV: STORE_LIMIT}  # far above what they use here
    fleet.ok(
        "up", "--port", str(free_port()), "--monitor-port", str(free_port()), "--bus-servers", "2",
        env=os.environ | limits,
    )  # fmt: skip
    try:
        yield fleet
    finally:
        subprocess.run([FLOTILLA, "--state-dir", str(fleet.state), "down"], capture_output=True, timeout=120)


def test_agents_on_the_second_server_join_through_the_callout_and_heartbeat(fleet: Fleet) -> None:
    info = runfile.load(fleet.state)
    assert info is not None and [n.name for n in runfile.bus_servers(info)] == ["nats-server", "nats-server-2"]
    routes = fleet.monitor(2, "routez")
    assert routes["num_routes"] >= 1, routes  # the two servers are one NATS cluster

    fleet.ok("sim", "--clusters", str(CLUSTERS), "--nodes", str(NODES), "--prefix", "two", "--bus-server", "2")

    on_second = eventually_sync(
        lambda: fleet.sim_connections(2),
        "every cluster agent and node connected to the second server",
        until=lambda names: len(names) == CLUSTERS * (NODES + 1),
        **LOOK,
    )
    assert fleet.sim_connections(1) == set(), "the sim's connections belong on the server it was given"
    assert len(on_second) == CLUSTERS * (NODES + 1)
    eventually_sync(lambda: fleet.ready_nodes() == CLUSTERS * NODES, "every node Ready (heartbeats arrive)", **LOOK)
    # the sim's clusters carry what they say of themselves and the sim's token label, one not hiding the other
    for selector in ("flotilla.dev/sim=true", "flotilla.dev/sim-fleet=two"):
        listed = json.loads(fleet.ok("clusters", "list", "-l", selector, "-o", "json"))
        assert len(listed) == CLUSTERS, (selector, listed)
    # JetStream's streams (and so the agents' consumers) are all on the first server
    assert fleet.monitor(1, "jsz")["streams"] > 0
    assert fleet.monitor(2, "jsz").get("streams", 0) == 0


def test_a_restart_of_the_second_server_brings_its_agents_back_to_it(fleet: Fleet) -> None:
    before = fleet.monitor(2, "varz")["server_id"]
    out = fleet.ok("restart", "nats-server-2")
    assert "nats-server-2: pid" in out, out
    assert fleet.monitor(2, "varz")["server_id"] != before  # a new process
    eventually_sync(
        lambda: fleet.sim_connections(2),
        "every cluster agent and node connected again to the second server",
        until=lambda names: len(names) == CLUSTERS * (NODES + 1),
        **LOOK,
    )
    assert fleet.sim_connections(1) == set(), "reconnected to the server they were given, not to the first"
    eventually_sync(lambda: fleet.ready_nodes() == CLUSTERS * NODES, "every node Ready again", **LOOK)


def test_agents_on_the_second_server_obey_commands_from_streams_on_the_first(fleet: Fleet) -> None:
    out = fleet.ok(
        "upgrade", "start", "--to", "v1.30.4", "-l", "env=sim", "--canary", "0", "--soak", "0s",
        "--max-concurrent-clusters", str(CLUSTERS), "--max-unavailable", "1",
    )  # fmt: skip
    rollout = next(t for t in out.split() if t.startswith("r-"))

    def state() -> str:
        status: str = json.loads(fleet.ok("upgrade", "status", rollout, "-o", "json"))["rollout"]["state"]
        return status

    final = eventually_sync(lambda: (s := state()) in ENDED and s, "the rollout to end", **LOOK)
    assert final == "Succeeded", fleet.ok("upgrade", "status", rollout)


def test_restarting_nats_server_restarts_every_server_in_turn(fleet: Fleet) -> None:
    info = runfile.load(fleet.state)
    assert info is not None
    before = {n.name: n.pid for n in runfile.bus_servers(info)}
    fleet.ok("restart", "nats-server")
    info = runfile.load(fleet.state)
    assert info is not None
    after = {n.name: n.pid for n in runfile.bus_servers(info)}
    assert after.keys() == before.keys() and all(after[name] != before[name] for name in before), (before, after)
    assert all(n.supervision.requested_restarts >= 1 for n in runfile.bus_servers(info))
    eventually_sync(
        lambda: fleet.sim_connections(2),
        "the sim's agents back on the second server",
        until=lambda names: len(names) == CLUSTERS * (NODES + 1),
        **LOOK,
    )


def memory_limits(fleet: Fleet) -> list[str]:
    """The GOMEMLIMIT each running nats-server was started with, the first first."""
    info = runfile.load(fleet.state)
    assert info is not None
    limits = []
    for server in runfile.bus_servers(info):
        environ = Path(f"/proc/{server.pid}/environ").read_bytes().split(b"\0")
        limits.append(next((v.decode().partition("=")[2] for v in environ if v.startswith(b"GOMEMLIMIT=")), ""))
    return limits


def test_the_server_that_stores_gets_its_own_memory_limit_across_restarts(fleet: Fleet) -> None:
    assert memory_limits(fleet) == [STORE_LIMIT, SERVERS_LIMIT]
    fleet.ok("restart", "nats-server")  # the supervisor starts them again with the environment `up` was given
    assert memory_limits(fleet) == [STORE_LIMIT, SERVERS_LIMIT]


def test_a_persons_new_role_reaches_the_second_server_too(fleet: Fleet) -> None:
    fleet.ok("user", "add", "dave", "--role", "viewer")
    info = runfile.load(fleet.state)
    assert info is not None
    second = runfile.bus_servers(info)[1].url

    def pause_through_the_second() -> str:  # an operator's command; the orchestrator knows no such rollout
        return fleet.run("--server", second, "--user", "dave", "upgrade", "pause", "r-000000000000").stderr

    assert "not_found" not in pause_through_the_second()
    said = fleet.ok("user", "add", "dave", "--role", "operator")
    assert "nats-server-2" in said, said
    eventually_sync(
        pause_through_the_second,
        "the second server to apply dave's operator grant",
        until=lambda stderr: "not_found" in stderr,
        **LOOK,
    )
