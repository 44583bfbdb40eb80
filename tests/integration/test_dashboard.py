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
from flotilla_testkit import eventually_sync

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

    def ok(self, *args: str) -> str:
        argv = [FLOTILLA, "--state-dir", str(self.state), *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=_env())
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout

    def password(self, user: str) -> str:
        password: str = json.loads((self.state / "users" / f"{user}.json").read_text())["password"]
        return password

    def rollout_state(self, rollout: str) -> str:
        state: str = json.loads(self.ok("upgrade", "status", rollout, "-o", "json"))["rollout"]["state"]
        return state

    def browser(self, scenario: str, user: str, **extra: Any) -> dict[str, Any]:
        """Run one scenario of check.mjs; its findings (it fails the test with its reason when a check fails)."""
        args = {"url": self.url, "user": user, "password": self.password(user), "shots": str(ARTIFACTS)}
        args |= {"scenario": scenario, "moving": self.moving, "frozen": self.frozen, "chromium": CHROMIUM, **extra}
        done = subprocess.run(
            ["node", "test/check.mjs", json.dumps(args)], cwd=DASHBOARD, capture_output=True, text=True, timeout=240
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
        fleet.ok("clusters", "label", bad.split("/", 1)[1], "group=bad")
        argv = [FLOTILLA, "--state-dir", str(fleet.state), "dashboard", "--port", "0"]
        server = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
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
    assert fleet.rollout_state(fleet.moving) == "Paused"  # through the CLI, as the brief asks
    assert found["console_errors"] == [] and found["page_errors"] == []
