"""Named users on a local stack as people use them: `flotilla user add NAME --role ROLE`, then `--user NAME`.

The bus enforces each role (nats-server refuses what the grant does not allow, the CLI names the role), adding
and removing a user reloads the running server (no restart), and a removed user can no longer connect.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from flotilla_client import runfile, users
from flotilla_client.client import FlotillaClient
from flotilla_client.errors import ClientError
from flotilla_client.natsserver import free_port
from flotilla_contracts import subjects
from flotilla_contracts.errors import ErrorCode
from flotilla_contracts.subjects import Service
from flotilla_runtime import logins
from flotilla_runtime.natsconn import connect_options, with_user
from flotilla_testkit import eventually

pytestmark = pytest.mark.integration
FLOTILLA = str(Path(sys.executable).parent / "flotilla")


class Fleet:
    def __init__(self, state: Path) -> None:
        self.state = state

    def run(self, *args: str, user: str = "") -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLOTILLA_")}
        if user:
            env["FLOTILLA_USER"] = user  # the environment variable, as --user
        argv = [FLOTILLA, "--state-dir", str(self.state), *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)

    def ok(self, *args: str, user: str = "") -> str:
        done = self.run(*args, user=user)
        assert done.returncode == 0, (args, user, done.stdout, done.stderr)
        return done.stdout

    def refused(self, *args: str, user: str, role: str) -> str:
        done = self.run(*args, user=user)
        assert done.returncode == 1, (args, user, done.stdout, done.stderr)
        assert f"user {user} (role {role}) is not allowed" in done.stderr, done.stderr
        assert "refused the request" in done.stderr and "Traceback" not in done.stderr, done.stderr
        return done.stderr


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path_factory.mktemp("users") / ".flotilla")
    fleet.ok("up", "--port", str(free_port()), "--monitor-port", "0")
    try:
        fleet.ok("sim", "--clusters", "2", "--nodes", "1", "--prefix", "u")
        yield fleet
    finally:
        fleet.run("down")


def test_each_role_does_what_the_bus_allows_it(fleet: Fleet) -> None:
    for name, role in (("alice", "viewer"), ("bob", "operator"), ("carol", "admin")):
        assert f"added user {name} (role {role})" in fleet.ok("user", "add", name, "--role", role)
        credentials = fleet.state / "users" / f"{name}.json"
        assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    listed = json.loads(fleet.ok("user", "list", "-o", "json"))
    assert listed == [{"name": n, "role": r} for n, r in (("alice", "viewer"), ("bob", "operator"), ("carol", "admin"))]

    # A viewer reads: lists, the rollout list, events (an ordered consumer), discovery.
    assert "u-0001" in fleet.ok("clusters", "list", "-o", "name", user="alice")
    fleet.ok("upgrade", "list", user="alice")
    assert "cluster.u-0001" in fleet.ok("events", "--subject", "cluster.>", user="alice")
    assert "registration" in fleet.ok("status", user="alice")

    # An operator may not start a rollout, an admin may; the operator pauses it, the viewer may not.
    fleet.refused("upgrade", "start", "--to", "v1.30.4", "--canary", "1", "--soak", "10m", user="bob", role="operator")
    fleet.ok("upgrade", "start", "--to", "v1.30.4", "--canary", "1", "--soak", "10m", user="carol")
    rollout = fleet.ok("upgrade", "list", "-o", "name", user="alice").split()[0].removeprefix("rollout/")
    fleet.refused("upgrade", "pause", rollout, user="alice", role="viewer")
    fleet.ok("upgrade", "pause", rollout, "--reason", "on call", user="bob")
    assert "Paused" in fleet.ok("upgrade", "status", rollout, user="alice")
    fleet.refused("token", "create", user="bob", role="operator")
    fleet.ok("upgrade", "abort", rollout, user="bob")


async def test_a_new_role_is_reloaded_and_a_removed_user_cannot_connect(fleet: Fleet) -> None:
    fleet.ok("user", "add", "dave", "--role", "viewer")
    fleet.refused("upgrade", "pause", "r-000000000000", user="dave", role="viewer")
    info = runfile.load(fleet.state)
    assert info is not None
    assert "reloaded its configuration" in fleet.ok("user", "add", "dave", "--role", "operator")
    after = runfile.load(fleet.state)
    assert after is not None and after.nats.pid == info.nats.pid, "a new role is a reload, not a restart"
    # The bus lets the request through now: the orchestrator answers it (no such rollout).
    await eventually(
        lambda: "not_found" in fleet.run("upgrade", "pause", "r-000000000000", user="dave").stderr,
        "nats-server to apply dave's operator grant",
        timeout_s=10,
    )
    dave = users.load(fleet.state, "dave")
    url = runfile.server_url(fleet.state)
    assert url and await users.can_log_in(url, dave)
    login = with_user(url, dave.name, dave.password)
    nc = await logins.connect(login, allow_reconnect=False, **connect_options(login))
    try:
        assert "removed user dave" in fleet.ok("user", "remove", "dave")
        assert not await users.can_log_in(url, dave)
        await eventually(lambda: nc.is_closed, "the server to close dave's open connection", timeout_s=10)
    finally:
        await nc.close()
    assert "dave" not in fleet.ok("user", "list")
    done = fleet.run("clusters", "list", user="dave")
    assert done.returncode == 1 and "no user 'dave'" in done.stderr, done.stderr


async def test_what_a_person_does_names_them_and_nobody_can_act_in_their_name(fleet: Fleet) -> None:
    fleet.ok("user", "add", "erin", "--role", "operator")
    fleet.ok("user", "add", "frank", "--role", "admin")
    start = ("upgrade", "start", "--to", "v1.30.4", "--canary", "1", "--soak", "10m")
    started = await eventually(  # once an earlier test's aborted rollout has let go of its clusters
        lambda: (done := fleet.run(*start, user="frank")).returncode == 0 and done.stdout,
        "frank's rollout to start",
    )
    found = re.search(r"\br-[0-9a-f]{12}\b", started)
    assert found, started
    rollout = found.group(0)
    fleet.ok("upgrade", "pause", rollout, user="erin")

    # The events the pause caused name erin (the bus proved it: the subject she may publish on names her).
    def erins() -> list[dict[str, Any]]:
        out = fleet.ok("events", "--subject", f"rollout.{rollout}.>", "--actor", "erin", "-o", "json")
        return [json.loads(line) for line in out.splitlines()]

    paused = await eventually(
        lambda: [e for e in erins() if e["data"].get("to") == "Paused"], "erin's pause in the event log"
    )
    assert paused[0]["actor"] == "erin" and paused[0]["data"]["message"] == "paused by erin", paused
    assert all(e["actor"] == "erin" for e in erins())

    # The audit trail: frank started it, erin paused it; --actor keeps one person's.
    trail = json.loads(fleet.ok("audit", "-o", "json", user="erin"))
    mine = [(e["actor"], e["object"], e["action"]) for e in trail if e["object"] == f"rollout/{rollout}"]
    assert ("frank", f"rollout/{rollout}", "started") in mine and ("erin", f"rollout/{rollout}", "Paused") in mine
    assert {e["actor"] for e in json.loads(fleet.ok("audit", "--actor", "erin", "-o", "json"))} == {"erin"}
    assert "erin" in fleet.ok("audit", "--since", "1h")

    # Erin cannot act in frank's name, nor on the plain form (whose events name the built-in admin).
    erin = users.load(fleet.state, "erin")
    url = runfile.server_url(fleet.state)
    assert url
    async with FlotillaClient(with_user(url, erin.name, erin.password)) as client:
        assert client.actor == "erin"
        body = msgspec.json.encode({"rollout_id": rollout})
        for subject in (
            subjects.command_by(Service.UPGRADE_ORCHESTRATOR, "upgrade.resume", "frank"),
            subjects.command(Service.UPGRADE_ORCHESTRATOR, "upgrade.resume"),
        ):
            with pytest.raises(ClientError) as refused:
                await client.request_raw(subject, body, "upgrade.ResumeRolloutRequest/v1")
            assert refused.value.code == ErrorCode.FORBIDDEN, refused.value
    assert "Paused" in fleet.ok("upgrade", "status", rollout, user="erin")
    fleet.ok("upgrade", "abort", rollout, user="frank")
