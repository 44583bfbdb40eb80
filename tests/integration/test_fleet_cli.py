"""The fleet commands as a user runs them against `flotilla up`, with a simulated fleet joining by token."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from flotilla_client import runfile
from flotilla_client.natsserver import free_port
from flotilla_testkit import eventually_sync

pytestmark = pytest.mark.integration
FLOTILLA = str(Path(sys.executable).parent / "flotilla")
CLI = {"timeout_s": 30.0, "every_s": 0.5}  # each look runs the CLI (a process): look twice a second


class Fleet:
    def __init__(self, state: Path, url: str) -> None:
        self.state, self.plain_url = state, url

    @property
    def url(self) -> str:
        """The admin URL `flotilla up` recorded (the bus has authentication on)."""
        return runfile.server_url(self.state) or self.plain_url

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [FLOTILLA, "--state-dir", str(self.state), *args], capture_output=True, text=True, timeout=60
        )

    def ok(self, *args: str) -> str:
        done = self.run(*args)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "-o", "json"))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    state = tmp_path_factory.mktemp("fleet") / ".flotilla"
    port = free_port()
    fleet = Fleet(state, f"nats://127.0.0.1:{port}")
    fleet.ok("up", "--port", str(port), "--monitor-port", "0")
    try:
        yield fleet
    finally:
        fleet.run("down")


@pytest.fixture(scope="module")
def sim(fleet: Fleet) -> Iterator[str]:
    """`flotilla sim` with a token that needs approval; `flotilla down` must stop it with the rest."""
    token = fleet.ok("token", "create", "--max-uses", "5", "--label", "env=lab").strip()
    out = fleet.ok("sim", "--clusters", "2", "--nodes", "2", "--token", token, "--prefix", "clicheck", "--no-wait")
    pid = int(out.split("(pid ")[1].split(",")[0])
    yield token
    fleet.ok("down")
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_joined_clusters_are_listed_pending_then_approved_labelled_and_tainted(fleet: Fleet, sim: str) -> None:
    clusters = eventually_sync(lambda: len(found := fleet.json("clusters", "list")) == 2 and found, "2 clusters", **CLI)
    assert {c["state"] for c in clusters} == {"Pending"}
    assert all(c["labels"]["env"] == "lab" for c in clusters)
    first = clusters[0]["cluster_id"]
    assert "approved" in fleet.ok("clusters", "approve", first)
    again = fleet.run("clusters", "approve", first)
    assert again.returncode == 1
    assert "conflict" in again.stderr and "Approved" in again.stderr
    fleet.ok("clusters", "label", first, "tier=gold")
    assert [c["cluster_id"] for c in fleet.json("clusters", "list", "-l", "tier=gold")] == [first]
    assert "maint=yes:NoSchedule" in fleet.ok("clusters", "taint", first, "maint=yes:NoSchedule")
    # Once approved, the heartbeat service tracks the cluster: health shows beside the inventory.
    ready = eventually_sync(
        lambda: [c for c in fleet.json("clusters", "list") if (c["health"] or {}).get("state") == "Ready"],
        "a Ready cluster",
        **CLI,
    )
    assert [c["cluster_id"] for c in ready] == [first]
    nodes = eventually_sync(
        lambda: [n for n in fleet.json("nodes", "list", "--cluster", first) if n["health"]], "nodes with health", **CLI
    )
    assert {n["health"]["state"] for n in nodes} == {"Ready"}
    assert "2/5" in fleet.ok("token", "list")


def test_bad_input_gets_one_clear_line_and_a_non_zero_exit(fleet: Fleet) -> None:
    cases = [
        (("clusters", "list", "-l", "env in (lab"), "missing ')'"),
        (("clusters", "label", "c1", "bad key=x"), "label key"),
        (("clusters", "taint", "c1", "a=b:Sometimes"), "effect must be one of"),
        (("clusters", "approve", "no-such-cluster"), "no cluster no-such-cluster"),
        (("token", "create", "--ttl", "soon"), "duration"),
        (("upgrade", "plan", "--to", "latest"), "not a Kubernetes version"),
    ]
    for args, message in cases:
        done = fleet.run(*args)
        assert done.returncode != 0, args
        assert message in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr
