"""The dashboard in a real browser: headless Chromium (Debian's) driven by playwright-core (dashboard/test/check.mjs)
against a local fleet with simulated clusters, `flotilla dashboard` serving the built page.

A viewer sees the fleet, a rollout's progress moving (from events), a frozen rollout's reason, and no action
button; an operator pauses a rollout from the page and `flotilla upgrade status` shows it Paused. No console
errors. Screenshots go to .flotilla-test-artifacts/dashboard/ (printed; not committed). `make dashboard` builds
the page and `make chromium` installs the browser (both are prerequisites of `make test`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from flotilla_client.natsserver import free_port
from flotilla_testkit import ConditionNotMet, eventually_sync

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "dashboard"
ARTIFACTS = ROOT / ".flotilla-test-artifacts" / "dashboard"
FLOTILLA = str(Path(sys.executable).parent / "flotilla")
CHROMIUM = "/usr/bin/chromium"


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("FLOTILLA_")}


@dataclass
class Fleet:
    state: Path
    url: str = ""  # the dashboard's address
    moving: str = ""  # a rollout that progresses (canary, then a long soak)
    frozen: str = ""  # a rollout frozen by a node that always fails its upgrade
    bad: str = ""  # the cluster of that node

    def argv(self, *args: str) -> list[str]:
        return [FLOTILLA, "--state-dir", str(self.state), *args]

    def ok(self, *args: str) -> str:
        done = subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=120, env=_env())
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout

    def password(self, user: str) -> str:
        password: str = json.loads((self.state / "users" / f"{user}.json").read_text())["password"]
        return password

    def rollout_state(self, rollout: str) -> str:
        state: str = json.loads(self.ok("upgrade", "status", rollout, "-o", "json"))["rollout"]["state"]
        return state

    def browser(self, scenario: str, user: str, password: str = "", **extra: Any) -> dict[str, Any]:
        """Run one scenario of check.mjs; its findings (it fails the test with its reason when a check fails)."""
        password = password or self.password(user)
        args = {"url": self.url, "user": user, "password": password, "shots": str(ARTIFACTS)}
        args |= {"scenario": scenario, "moving": self.moving, "frozen": self.frozen, "chromium": CHROMIUM, **extra}
        done = subprocess.run(
            ["node", "test/check.mjs", json.dumps(args)],
            cwd=DASHBOARD,
            capture_output=True,
            text=True,
            timeout=240,
            env=_env(),
        )
        assert done.returncode == 0, f"{scenario} in the browser: {done.stderr}\nfound: {done.stdout}"
        found: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return found


def _prerequisites() -> None:
    missing = [
        what
        for what, there in (
            (f"{CHROMIUM} (`make chromium`)", Path(CHROMIUM).exists()),
            ("node", shutil.which("node") is not None),
            ("dashboard/dist (`make dashboard`)", (DASHBOARD / "dist" / "index.html").exists()),
            ("dashboard/node_modules (`make dashboard`)", (DASHBOARD / "node_modules" / "playwright-core").exists()),
        )
        if not there
    ]
    assert not missing, f"missing for the browser test: {', '.join(missing)}"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    _prerequisites()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    fleet = Fleet(tmp_path_factory.mktemp("dashboard") / ".flotilla")
    fleet.ok("up", "--port", str(free_port()), "--monitor-port", "0")
    server: subprocess.Popen[str] | None = None
    try:
        fleet.ok("user", "add", "alice", "--role", "viewer")
        fleet.ok("user", "add", "bob", "--role", "operator")
        fleet.ok("sim", "--clusters", "3", "--nodes", "3", "--prefix", "ok", "--step-seconds", "1")
        fleet.ok("sim", "--clusters", "1", "--nodes", "2", "--prefix", "bad", "--fault", "bad-0000-n01=upgrade_fails")
        bad = next(c for c in fleet.ok("clusters", "list", "-o", "name").split() if c.startswith("cluster/bad-"))
        fleet.bad = bad.split("/", 1)[1]
        fleet.ok("clusters", "label", fleet.bad, "group=bad")
        server = subprocess.Popen(
            fleet.argv("dashboard", "--port", "0"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_env(),
        )
        assert server.stdout is not None
        first = server.stdout.readline()
        assert first.startswith("Flotilla dashboard: http://127.0.0.1:"), first
        fleet.url = first.split(": ", 1)[1].strip()
        fleet.frozen = _started(fleet.ok("upgrade", "start", "--to", "v1.30.4", "-l", "group=bad", "--canary", "0"))
        eventually_sync(
            lambda: fleet.rollout_state(fleet.frozen), "the bad rollout to freeze", timeout_s=60, until="Frozen".__eq__
        )
        start = ("upgrade", "start", "--to", "v1.30.4", "-l", "group!=bad", "--canary", "1", "--soak", "10m")
        fleet.moving = _started(fleet.ok(*start))
        yield fleet
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        fleet.ok("down")
        print(f"\ndashboard screenshots: {ARTIFACTS}")


def _started(out: str) -> str:
    """The id in `rollout r-... started: ...`."""
    return out.split()[1]


def test_a_viewer_watches_the_fleet_and_rollouts_live(fleet: Fleet) -> None:
    found = fleet.browser("viewer", "alice", clusters=4)
    print(f"\ndashboard (viewer): {found} screenshots in {ARTIFACTS}")
    first, later = found["progress"]
    assert later > first  # moved while the page watched: events, not a reload
    assert "Frozen: NodeFailureBudgetExceeded" in found["freeze_text"]
    assert found["action_buttons"] == 0  # a viewer is shown nothing to press
    assert found["events_shown"] > 0
    assert found["console_errors"] == [] and found["page_errors"] == []


def test_an_operator_pauses_a_rollout_from_the_page(fleet: Fleet) -> None:
    found = fleet.browser("operator", "bob", clusters=4)
    print(f"\ndashboard (operator): {found}")
    assert found["confirmation"].startswith(f"Pause rollout {fleet.moving}: no new cluster or node starts")
    assert fleet.rollout_state(fleet.moving) == "Paused"  # through the CLI
    audit = json.loads(fleet.ok("audit", "--actor", "bob", "-o", "json"))
    assert [(a["actor"], a["object"], a["action"]) for a in audit] == [("bob", f"rollout/{fleet.moving}", "Paused")], (
        audit
    )
    assert found["event_by_bob"]  # the page's event stream names him too
    assert found["console_errors"] == [] and found["page_errors"] == []


def test_the_page_reconnects_by_itself_and_follows_events_again(fleet: Fleet) -> None:
    """Last: nats-server restarts under the open page (same port); the page reconnects, re-creates its ordered
    consumer, and a label set afterwards shows in the fleet table."""
    restart = fleet.argv("restart", "nats-server")
    after = fleet.argv("clusters", "label", fleet.bad, "probe=after-restart")
    found = fleet.browser(
        "reconnect", "alice", clusters=4, restart=restart, after=after, expect_label="probe=after-restart"
    )
    assert found["reconnects"] >= 1
    assert found["page_errors"] == []


def test_the_page_rules() -> None:
    """dashboard/test/model.test.mjs (node's test runner): subjects, selectors, offered verbs, events, escaping."""
    done = subprocess.run(["npm", "test"], cwd=DASHBOARD, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "# fail 0" in done.stdout, done.stdout


@pytest.mark.slow
def test_a_large_fleet_first_render_and_memory(tmp_path: Path) -> None:
    """Issue 20 item 5: 1,000 clusters x 10 nodes (FLOTILLA_DASHBOARD_CLUSTERS / _NODES to change), measured
    with whatever joined within FLOTILLA_DASHBOARD_JOIN_S (the sim may not bring them all up on 2 cores; printed).
    Prints the time to the fleet table and JS heap; asserts only that the page showed what the fleet has."""
    _prerequisites()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    clusters = int(os.environ.get("FLOTILLA_DASHBOARD_CLUSTERS", "1000"))
    nodes = int(os.environ.get("FLOTILLA_DASHBOARD_NODES", "10"))
    join_s = float(os.environ.get("FLOTILLA_DASHBOARD_JOIN_S", "600"))
    fleet = Fleet(tmp_path / ".flotilla")
    fleet.ok("up", "--port", str(free_port()), "--monitor-port", "0")
    server: subprocess.Popen[str] | None = None
    try:
        fleet.ok("sim", "--clusters", str(clusters), "--nodes", str(nodes), "--prefix", "big", "--no-wait")

        def joined() -> int:
            return len(fleet.ok("clusters", "list", "-o", "name").split())

        try:
            eventually_sync(joined, "the clusters to join", timeout_s=join_s, every_s=5, until=lambda n: n >= clusters)
        except ConditionNotMet:
            pass  # measured with what joined: the figure says how many
        count = joined()
        server = subprocess.Popen(fleet.argv("dashboard", "--port", "0"), stdout=subprocess.PIPE, text=True, env=_env())
        assert server.stdout is not None
        fleet.url = server.stdout.readline().split(": ", 1)[1].strip()
        admin = json.loads((fleet.state / "auth" / "bus.json").read_text())["passwords"]["admin"]
        found = fleet.browser("measure", "admin", password=admin, clusters=min(count, 1000), timeout_ms=120000)
        load = os.getloadavg()
        print(
            f"\ndashboard, large fleet: {count} of {clusters} clusters joined ({nodes} nodes each): "
            f"fleet table shown {found['fleet_shown_ms']} ms after sign-in, first render {found['first_render_ms']} ms "
            f"after navigation, page loaded {found['load_ms']} ms, JS heap {found['js_heap_used_mb']} MB, "
            f"a render of the fleet table {found['last_render_ms']} ms (slowest {found['slowest_render_ms']} ms), "
            f"selector filter {found['filter_ms']} ms; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
        )
        assert found["console_errors"] == [] and found["page_errors"] == []
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        fleet.ok("down")
