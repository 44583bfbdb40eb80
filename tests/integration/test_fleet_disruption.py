"""No stampede (issue 21 item 5), on a local fleet of 50 simulated clusters as a user runs it: the sim process is
frozen (SIGSTOP), the whole fleet goes Unreachable at once, and: the scheduler says so (FleetDisrupted) and moves
no placement even past its toleration, a started rollout freezes with FleetDisruption; after SIGCONT the fleet is
Ready again, FleetRecovered is said, the rollout's freeze lifts, and the placements are where they were.
The heartbeat service runs with a short interval so Unreachable comes within seconds."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest

from flotilla_client import runfile
from flotilla_client.natsserver import free_port
from flotilla_contracts import catalogue
from flotilla_contracts.v1.scheduler_events import FLEET_SCOPE, FleetDisrupted, FleetRecovered
from flotilla_runtime import logins
from flotilla_runtime.bus import connect_options
from flotilla_testkit import eventually_sync

pytestmark = pytest.mark.integration
FLOTILLA = str(Path(sys.executable).parent / "flotilla")
CLUSTERS = 50
TOLERATION_S = 3
LOOK = {"timeout_s": 90.0, "every_s": 0.5}  # each look runs the CLI (a process)
ENV = {
    "FLOTILLA_HEARTBEAT_INTERVAL_S": "0.5",
    "FLOTILLA_HEARTBEAT_MISSED_INTERVALS": "2",
    "FLOTILLA_HEARTBEAT_STARTUP_GRACE_S": "1",
    "FLOTILLA_HEARTBEAT_FLAP_WINDOW_S": "2",
}
SUBSCRIPTION = f"""\
name: web
policy:
  selector: env=lab
  strategy: Replicate
  tolerations:
    - {{key: flotilla.dev/unreachable, operator: Exists, effect: NoExecute, toleration_seconds: {TOLERATION_S}}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: web, namespace: shop}}
data: {{greeting: hello}}
"""


class Fleet:
    def __init__(self, state: Path) -> None:
        self.state = state

    def ok(self, *args: str) -> str:
        done = subprocess.run(
            [FLOTILLA, "--state-dir", str(self.state), *args],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, **ENV},
        )
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "-o", "json"))

    def health(self) -> dict[str, str]:
        return {c["cluster_id"]: (c["health"] or {}).get("state", "") for c in self.json("clusters", "list")}

    def placements(self) -> dict[str, str]:
        return {p["cluster_id"]: p["since"] for p in self.json("subscriptions", "get", "web")["placements"]}

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        found: dict[str, Any] = self.json("upgrade", "status", rollout_id)["rollout"]
        return found

    def events(self, message: type[Any]) -> list[dict[str, Any]]:
        async def read() -> list[dict[str, Any]]:
            url = runfile.server_url(self.state)
            assert url
            nc = await logins.connect(url, **connect_options(url))
            try:
                subject = catalogue.subject_for(message, scope=FLEET_SCOPE)
                sub = await nc.jetstream().subscribe(subject, ordered_consumer=True)
                found = []
                while True:
                    try:
                        msg = await sub.next_msg(timeout=1.0)
                    except nats.errors.TimeoutError:
                        return found
                    found.append(msgspec.json.decode(msg.data))
            finally:
                await nc.close()

        return asyncio.run(read())


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path_factory.mktemp("disruption") / ".flotilla")
    fleet.ok("up", "--port", str(free_port()), "--monitor-port", "0")
    try:
        yield fleet
    finally:
        subprocess.run([FLOTILLA, "--state-dir", str(fleet.state), "down"], capture_output=True, timeout=120)


def test_a_fleet_that_goes_silent_at_once_moves_nothing_and_resumes(fleet: Fleet, tmp_path: Path) -> None:
    token = fleet.ok("token", "create", "--auto-approve", "--label", "env=lab", "--max-uses", str(CLUSTERS)).strip()
    out = fleet.ok("sim", "--clusters", str(CLUSTERS), "--nodes", "1", "--token", token, "--prefix", "d")
    sim_pid = int(out.split("(pid ")[1].split(",")[0])
    eventually_sync(
        lambda: (h := fleet.health()) and len(h) == CLUSTERS and set(h.values()) == {"Ready"}, "all Ready", **LOOK
    )
    path = tmp_path / "web.yaml"
    path.write_text(SUBSCRIPTION)
    fleet.ok("subscriptions", "apply", "-f", str(path))
    before = eventually_sync(lambda: len(p := fleet.placements()) == CLUSTERS and p, "web on every cluster", **LOOK)
    fleet.ok("upgrade", "start", "--to", "v1.30.4", "--approve-before", "0")
    rollout_id = fleet.json("upgrade", "list")[0]["rollout_id"]
    waiting = eventually_sync(lambda: fleet.rollout(rollout_id)["state"] == "AwaitingApproval", "rollout", **LOOK)
    assert waiting

    os.kill(sim_pid, signal.SIGSTOP)  # the hub loses sight of the whole fleet at once
    try:
        disrupted = eventually_sync(lambda: fleet.events(FleetDisrupted), "FleetDisrupted", **LOOK)
        assert disrupted[0]["began"][0]["total"] == CLUSTERS, disrupted
        frozen = eventually_sync(lambda: (r := fleet.rollout(rollout_id))["state"] == "Frozen" and r, "frozen", **LOOK)
        assert frozen["freeze"]["reason"] == "FleetDisruption", frozen
        eventually_sync(lambda: set(fleet.health().values()) == {"Unreachable"}, "all Unreachable", **LOOK)
        # Nothing must happen: past every toleration (plus the scheduler's timer tick), no placement moved.
        past = time.monotonic() + TOLERATION_S + 2
        eventually_sync(lambda: time.monotonic() > past, "every toleration run out", **LOOK)
        assert fleet.placements() == before
    finally:
        os.kill(sim_pid, signal.SIGCONT)

    eventually_sync(lambda: set(fleet.health().values()) == {"Ready"}, "all Ready again", **LOOK)
    recovered = eventually_sync(lambda: fleet.events(FleetRecovered), "FleetRecovered", **LOOK)
    assert recovered[0]["ended"][0]["total"] == CLUSTERS
    eventually_sync(lambda: fleet.rollout(rollout_id)["state"] == "AwaitingApproval", "freeze lifted", **LOOK)
    assert fleet.placements() == before
