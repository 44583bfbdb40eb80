"""The CLI follows the bus, on a local stack as a user runs it: `--watch` follows events instead of polling (a
rollout watched to its end asks for its status once per burst of the rollout's events, a soak without events asks
nothing; a list watch prints a cluster that joins while it runs), shell completion offers the ids the services
know, and `events` and `token create` take -o yaml."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from nats.aio.msg import Msg

from flotilla_client import runfile
from flotilla_client.cli.watching import BURST_MAX_S, FALLBACK_S, QUIET_S
from flotilla_client.natsserver import free_port
from flotilla_contracts.subjects import EVT_PREFIX, Entity, Service, command
from flotilla_runtime import logins
from flotilla_testkit import eventually_sync

pytestmark = pytest.mark.integration
FLOTILLA = str(Path(sys.executable).parent / "flotilla")
SOAK_S = 8.0  # a quiet stretch between the waves: a poll would ask about eight times, a watch never


class Fleet:
    def __init__(self, state: Path) -> None:
        self.state = state

    @property
    def url(self) -> str:
        url = runfile.server_url(self.state)
        assert url, "flotilla up recorded no URL"
        return url

    def argv(self, *args: str) -> list[str]:
        return [FLOTILLA, "--state-dir", str(self.state), *args]

    def ok(self, *args: str, timeout: float = 120) -> str:
        done = subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path_factory.mktemp("watch") / ".flotilla")
    fleet.ok("up", "--port", str(free_port()), "--monitor-port", "0")
    try:
        fleet.ok("sim", "--clusters", "2", "--nodes", "3", "--prefix", "w")
        yield fleet
    finally:
        subprocess.run(fleet.argv("down"), capture_output=True, timeout=120)


def bursts(times: list[float]) -> int:
    """Bursts of events as the watch groups them, counted generously (a shorter quiet gap and a shorter burst than
    the watch's split more), so jitter between the test's and the CLI's clocks cannot undercount."""
    count, began, last = 0, -1e9, -1e9
    for at in sorted(times):
        if at - last > QUIET_S / 2 or at - began > BURST_MAX_S * 0.9:
            count, began = count + 1, at
        last = at
    return count


async def test_a_rollout_watched_to_its_end_asks_once_per_burst_of_its_events(fleet: Fleet) -> None:
    nc = await logins.connect(fleet.url)
    requests: list[float] = []
    events: list[float] = []

    async def on_request(_msg: Msg) -> None:
        requests.append(time.monotonic())

    async def on_event(_msg: Msg) -> None:
        events.append(time.monotonic())

    await nc.subscribe(command(Service.UPGRADE_ORCHESTRATOR, "upgrade.status"), cb=on_request)
    for entity in (Entity.ROLLOUT, Entity.ROLLOUT_WAVE, Entity.ROLLOUT_CLUSTER, Entity.ROLLOUT_NODE):
        await nc.subscribe(f"{EVT_PREFIX}.{entity.value}.>", cb=on_event)
    await nc.flush()
    started = time.monotonic()
    cli = await asyncio.create_subprocess_exec(
        *fleet.argv(
            "--trace", "upgrade", "start", "--to", "v1.30.4", "--canary", "1", "--soak", f"{SOAK_S:g}s", "--watch"
        ),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(cli.communicate(), 300)
    took = time.monotonic() - started
    await nc.drain()
    stdout, stderr = out.decode(), err.decode()
    assert cli.returncode == 0, (stdout, stderr)
    assert "Succeeded" in stdout and "Traceback" not in stderr
    assert len([line for line in stderr.splitlines() if line.startswith("trace ")]) == 1, stderr  # not one a look
    assert events and took > SOAK_S
    # Every look but the first follows an event by at most a burst (the watch looks when the burst ends), or a
    # FALLBACK_S without any: a poll would also ask all through the soak.
    unexplained = [r for r in requests if not any(r - BURST_MAX_S - 0.5 <= e <= r for e in events)]
    edges = [started, *sorted(events), started + took]
    fallbacks = sum(int((b - a) // FALLBACK_S) for a, b in itertools.pairwise(edges))
    assert len(unexplained) <= 1 + fallbacks, (len(unexplained), fallbacks, len(requests), len(events))
    assert 1 <= len(requests) <= 1 + bursts(events) + fallbacks, (len(requests), bursts(events), len(events), took)
    print(f"{len(events)} events in {bursts(events)} bursts, {len(requests)} status requests in {took:.1f}s")


def test_a_list_watch_prints_a_cluster_that_joins_while_it_runs(fleet: Fleet) -> None:
    # As a viewer: its grant lets it read the event streams with ordered consumers into its own inbox, no more.
    fleet.ok("user", "add", "watcher", "--role", "viewer")
    watcher = subprocess.Popen(
        fleet.argv("--user", "watcher", "--trace", "clusters", "list", "-w", "-o", "name"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line.strip()) for line in watcher.stdout or ()], daemon=True).start()
    seen: list[str] = []

    def printed(prefix: str) -> bool:
        while not lines.empty():
            seen.append(lines.get())
        return any(line.startswith(prefix) for line in seen)

    try:
        eventually_sync(lambda: printed("cluster/w-"), "the first listing", timeout_s=30)
        assert not printed("cluster/late-")
        fleet.ok("sim", "--clusters", "1", "--nodes", "1", "--prefix", "late")
        eventually_sync(lambda: printed("cluster/late-"), "the joined cluster in the watch", timeout_s=30)
    finally:
        watcher.send_signal(signal.SIGINT)
        _, stderr = watcher.communicate(timeout=30)
    assert watcher.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert len([line for line in stderr.splitlines() if line.startswith("trace ")]) == 1, stderr  # one a watch


def complete(fleet: Fleet, *words: str, shell: str = "bash") -> list[str]:
    """What `flotilla` offers for the last word (empty: a new one) of `flotilla --state-dir S WORDS`, as the
    shell's completion script asks for it (click's _FLOTILLA_COMPLETE protocol)."""
    line = ["flotilla", "--state-dir", str(fleet.state), *words]
    env = {**os.environ, "_FLOTILLA_COMPLETE": f"{shell}_complete", "COMP_WORDS": " ".join(line)}
    env["COMP_CWORD"] = str(len(line) - 1)
    done = subprocess.run([FLOTILLA], capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return done.stdout.splitlines()


def offered(lines: list[str]) -> set[str]:
    """The values in bash's answer: `plain,VALUE` lines."""
    return {line.partition(",")[2] for line in lines if line.startswith("plain,")}


def test_completion_offers_the_ids_the_services_know(fleet: Fleet, tmp_path: Path) -> None:
    # After the rollout test above (pytest keeps the file's order): one rollout exists.
    clusters = json.loads(fleet.ok("clusters", "list", "-o", "json"))
    rollouts = [r["rollout_id"] for r in json.loads(fleet.ok("upgrade", "list", "-o", "json"))]
    spec = tmp_path / "web.yaml"
    spec.write_text("name: web-complete\nmanifests:\n  - {apiVersion: v1, kind: ConfigMap, metadata: {name: w}}\n")
    fleet.ok("subscriptions", "apply", "-f", str(spec))
    ids, names = {c["cluster_id"] for c in clusters}, {c["identity"]["name"] for c in clusters}
    assert ids and rollouts
    assert offered(complete(fleet, "clusters", "get", "")) == ids | names
    assert offered(complete(fleet, "clusters", "approve", "w-")) == {i for i in ids | names if i.startswith("w-")}
    assert offered(complete(fleet, "nodes", "list", "--cluster", "")) == ids | names
    assert offered(complete(fleet, "upgrade", "status", "")) == set(rollouts)
    assert offered(complete(fleet, "upgrade", "retry", rollouts[0], "--cluster", "")) == ids | names
    assert "web-complete" in offered(complete(fleet, "subscriptions", "get", ""))
    # zsh and fish show what each id is
    zsh = complete(fleet, "upgrade", "status", "", shell="zsh")
    assert zsh[:2] == ["plain", rollouts[0]] and "(" in zsh[2]


def test_completion_without_a_fleet_offers_nothing_and_says_nothing(tmp_path: Path) -> None:
    nowhere = Fleet(tmp_path / "none")
    line = ["flotilla", "--server", f"nats://127.0.0.1:{free_port()}", "clusters", "get", ""]
    env = {**os.environ, "_FLOTILLA_COMPLETE": "bash_complete", "COMP_WORDS": " ".join(line), "COMP_CWORD": "5"}
    started = time.monotonic()
    done = subprocess.run(nowhere.argv()[:1], capture_output=True, text=True, timeout=30, env=env)
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, "", "")
    assert time.monotonic() - started < 10


def test_events_and_token_create_print_yaml(fleet: Fleet) -> None:
    created = yaml.safe_load(fleet.ok("token", "create", "--ttl", "1h", "--description", "yaml", "-o", "yaml"))
    assert created["token"] and created["info"]["description"] == "yaml"
    listed = json.loads(fleet.ok("token", "list", "-o", "json"))
    assert created["info"]["token_id"] in {t["token_id"] for t in listed}
    events = list(yaml.safe_load_all(fleet.ok("events", "--subject", "cluster.>", "-o", "yaml")))
    assert events and all(e["subject"].startswith("fleet.v1.evt.cluster.") for e in events)
    assert {"seq", "time", "schema", "msg_id", "data", "stream"} <= set(events[0])
    assert any(e["schema"].startswith("registration.ClusterJoinRequested/") for e in events)


def test_a_watch_that_loses_nats_says_so_and_exits(fleet: Fleet) -> None:
    """Last in the file: it kills nats-server (the supervisor brings it back)."""
    watcher = subprocess.Popen(
        fleet.argv("upgrade", "list", "-w", "-o", "name"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        first = watcher.stdout.readline() if watcher.stdout else ""
        assert first.startswith("rollout/"), first
        nats_pid = json.loads((fleet.state / "run.json").read_text())["nats"]["pid"]
        os.kill(nats_pid, signal.SIGKILL)
        _, stderr = watcher.communicate(timeout=30)  # the watch notices within ALIVE_CHECK_S, no event needed
    finally:
        if watcher.poll() is None:
            watcher.kill()
    assert watcher.returncode == 1
    assert "connection to NATS closed" in stderr and "run it again" in stderr and "Traceback" not in stderr
