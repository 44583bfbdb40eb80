"""The scheduler end to end, as a user runs it: `flotilla up`, two `flotilla sim` fleets, `flotilla subscriptions`.

A subscription lands on the matching clusters and every cluster agent applies it (the sim driver's
applier reports Applied); a cluster whose sim process is frozen (SIGSTOP: `flotilla up`'s supervisor would
restart a killed one at once) goes Unreachable and, past the toleration, its share moves to the others; when
it comes back (SIGCONT) nothing churns. Bad files get one clear
line. The heartbeat service runs with a short interval here so Unreachable comes within seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import nats
import nats.js.errors
import pytest

from flotilla_client import runfile
from flotilla_client.natsserver import free_port
from flotilla_contracts import catalogue
from flotilla_contracts.streams import FLEET_EVENTS
from flotilla_contracts.v1.heartbeat import ClusterHealthChanged
from flotilla_runtime import logins
from flotilla_runtime.bus import connect_options
from flotilla_testkit import eventually_sync

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SLOW = {"timeout_s": 45.0, "every_s": 0.5}  # each look runs the CLI (a process): look twice a second
FLOTILLA = str(Path(sys.executable).parent / "flotilla")
FAST_HEARTBEATS = {
    "FLOTILLA_HEARTBEAT_INTERVAL_S": "0.5",
    "FLOTILLA_HEARTBEAT_MISSED_INTERVALS": "2",
    "FLOTILLA_HEARTBEAT_STARTUP_GRACE_S": "1",
    "FLOTILLA_HEARTBEAT_FLAP_WINDOW_S": "2",  # and a node heard again is Ready again within seconds
}

SUBSCRIPTION = """\
name: web
description: a web shop, six replicas over the lab clusters
policy:
  selector: env=lab
  strategy: Divide
  replicas: 6
  tolerations:
    - {key: flotilla.dev/unreachable, operator: Exists, effect: NoExecute, toleration_seconds: 2}
overrides:
  - name: lab-label
    stage: global
    selector: env=lab
    type: MergePatch
    merge_patch: {metadata: {labels: {placed-by: flotilla}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 1
  template: {spec: {containers: [{name: web, image: "nginx:1.27"}]}}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: web-settings, namespace: shop}
data: {greeting: hello}
"""


class Fleet:
    def __init__(self, state: Path) -> None:
        self.state = state

    def run(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [FLOTILLA, "--state-dir", str(self.state), *args],
            capture_output=True,
            text=True,
            timeout=90,
            env={**os.environ, **(env or {})},
        )

    def ok(self, *args: str, env: dict[str, str] | None = None) -> str:
        done = self.run(*args, env=env)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "-o", "json"))

    def sim(self, prefix: str, clusters: int, token: str) -> int:
        out = self.ok("sim", "--clusters", str(clusters), "--nodes", "1", "--token", token, "--prefix", prefix)
        return int(out.split("(pid ")[1].split(",")[0])

    def placements(self) -> dict[str, Any]:
        return {p["cluster_id"]: p for p in self.json("subscriptions", "get", "web")["placements"]}


def scheduler_handled_health(state: Path, cluster_id: str, health: str) -> bool:
    """Whether `cluster_id`'s latest health event in FLEET_EVENTS says `health` and every scheduler consumer has
    handled all it reads (so that event too: a consumer acks after its effects are committed)."""

    async def check() -> bool:
        url = runfile.server_url(state)
        assert url, "flotilla up records the server's URL"
        nc = await logins.connect(url, **connect_options(url))
        try:
            js = nc.jetstream()
            subject = catalogue.subject_for(ClusterHealthChanged, cluster_id=cluster_id)
            try:
                latest = await js.get_last_msg(FLEET_EVENTS.name, subject)
            except nats.js.errors.NotFoundError:
                return False
            if msgspec.json.decode(latest.data)["to"] != health:
                return False
            consumers = [c for c in await js.consumers_info(FLEET_EVENTS.name) if c.name.startswith("scheduler-")]
            return bool(consumers) and all(c.num_pending == 0 and c.num_ack_pending == 0 for c in consumers)
        finally:
            await nc.close()

    return asyncio.run(check())


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    state = tmp_path_factory.mktemp("sched") / ".flotilla"
    fleet = Fleet(state)
    fleet.ok("up", "--port", str(free_port()), "--monitor-port", "0", env=FAST_HEARTBEATS)
    try:
        yield fleet
    finally:
        fleet.run("down")


def test_placed_applied_moved_on_loss_and_steady_on_return(fleet: Fleet, tmp_path: Path) -> None:
    token = fleet.ok("token", "create", "--auto-approve", "--label", "env=lab", "--max-uses", "10").strip()
    fleet.sim("stay", 2, token)
    gone_pid = fleet.sim("gone", 1, token)

    # The user applies once the clusters are up: every one joined and heard from (Ready).
    def all_ready() -> Any:
        listed = fleet.json("clusters", "list")
        return len(listed) == 3 and all((c["health"] or {}).get("state") == "Ready" for c in listed) and listed

    clusters = {c["identity"]["name"]: c["cluster_id"] for c in eventually_sync(all_ready, "3 clusters Ready", **SLOW)}
    gone = clusters["gone-0000"]
    path = tmp_path / "web.yaml"
    path.write_text(SUBSCRIPTION)
    assert "subscription web created (generation 1)" in fleet.ok("subscriptions", "apply", "-f", str(path))
    assert "unchanged" in fleet.ok("subscriptions", "apply", "-f", str(path))

    # Lands on the three lab clusters, two replicas each, and every cluster agent applies it.
    def all_applied() -> Any:
        info = fleet.json("subscriptions", "get", "web")
        states = {a["cluster_id"]: a["state"] for a in info["applied"]}
        return len(states) == 3 and set(states.values()) == {"Applied"} and info

    info = eventually_sync(all_applied, "web Applied on the 3 clusters", **SLOW)
    assert {p["cluster_id"]: p["replicas"] for p in info["placements"]} == dict.fromkeys(clusters.values(), 2)
    rendered = fleet.ok("subscriptions", "get", "web", "--cluster", gone)
    assert "replicas: 2" in rendered and "placed-by: flotilla" in rendered and "overrides: lab-label" in rendered
    assert "web" in fleet.ok("subscriptions", "list")

    # The `gone` fleet goes silent: Unreachable, then past the 2 s toleration its share moves to the others.
    before = fleet.placements()
    os.kill(gone_pid, signal.SIGSTOP)
    moved = eventually_sync(lambda: gone not in (now := fleet.placements()) and now, "web off the gone cluster", **SLOW)
    assert {c: p["replicas"] for c, p in moved.items()} == {c: 3 for c in clusters.values() if c != gone}
    assert all(moved[c]["since"] == before[c]["since"] for c in moved)  # the survivors were not re-placed

    # It comes back (same identity, same credential): Ready again, and nothing moves back.
    os.kill(gone_pid, signal.SIGCONT)
    eventually_sync(
        lambda: any(
            c["cluster_id"] == gone and (c["health"] or {}).get("state") == "Ready"
            for c in fleet.json("clusters", "list")
        ),
        "the gone cluster Ready again",
        **SLOW,
    )
    # Steady: once the scheduler has handled the cluster's return (not after a fixed pause), nothing has moved back.
    eventually_sync(
        lambda: scheduler_handled_health(fleet.state, gone, "Ready"), "the scheduler to see it Ready", **SLOW
    )
    assert fleet.placements() == moved
    removed = eventually_sync(
        lambda: (
            {a["cluster_id"]: a["state"] for a in fleet.json("subscriptions", "get", "web")["applied"]}.get(gone)
            == "Removed"
        ),
        "web Removed from the returned cluster",
        **SLOW,
    )
    assert removed

    assert "removing it from 2 cluster(s)" in fleet.ok("subscriptions", "delete", "web")
    assert fleet.json("subscriptions", "list") == []


def test_bad_files_get_one_clear_line_and_nothing_is_stored(fleet: Fleet, tmp_path: Path) -> None:
    config_map = "name: bad\nmanifests:\n  - {apiVersion: v1, kind: ConfigMap, metadata: {name: x}}\n"
    cases = {
        "name: bad\nmanifests: [\n": "invalid YAML at line",
        "name: bad\nmanifests:\n  - {apiVersion: v1, metadata: {name: x}}\n": "manifests[0].kind",
        config_map + "policy: {selector: 'a in (b'}\n": "invalid_selector",
        config_map + "policy: {replicas: many}\n": "$.policy.replicas",
        config_map + "policy: {strategy: Divide, replicas: 2, min_replicas_per_cluster: 3}\n": (
            "policy.min_replicas_per_cluster"
        ),
    }
    for text, expected in cases.items():
        path = tmp_path / "bad.yaml"
        path.write_text(text)
        done = fleet.run("subscriptions", "apply", "-f", str(path))
        assert done.returncode == 1, (text, done.stdout)
        assert expected in done.stderr, (text, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1
    assert "bad" not in [s["name"] for s in fleet.json("subscriptions", "list")]  # whatever other tests left
