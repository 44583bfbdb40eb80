"""The README's commands, in the README's order, on a fresh local fleet: what a newcomer types must work.

The commands are read from README.md's ```bash blocks (a `\\` line goes on with the next, `#` starts a
comment), so this test follows the README. The README's placeholders are filled as a reader would fill them:
TOKEN is what the last `token create` printed, ID the rollout the last `upgrade start` started, CLUSTER one
cluster picked from `clusters list` (the first Pending one, since the README approves it, and kept). The fleet
lives in a temporary folder (FLOTILLA_STATE_DIR) and `up` gets free ports (`--port`, `--monitor-port 0`):
other fleets may run on this machine. Commands of a program not in RUN or SKIPPED fail the test, so a new
command in the README is either run here or skipped with its reason.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from flotilla_client.natsserver import free_port
from flotilla_testkit import eventually_sync

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FLOTILLA = str(Path(sys.executable).parent / "flotilla")
RUN = ".venv/bin/flotilla"
SKIPPED = {
    "make": "`make test` is the whole suite this test belongs to, and `make demo` runs a fleet in the repository's "
    ".flotilla on the default ports; the demo's steps are the commands below",
    ".venv/bin/nats-server": "runs a bare nats-server on the fixed port 4222 in the background (other fleets on this "
    "machine may hold it); a service started alone is what tests/integration's start_service does",
    ".venv/bin/flotilla-registration": "a service in the foreground until Ctrl-C, on the bare nats-server above",
    "docker": "needs Docker, which this machine does not have",
    "kubectl": "needs a Kubernetes cluster to apply to (tests/kube renders and dry-runs these overlays)",
}
TIMEOUT_S = 600.0  # `upgrade watch` waits for the whole rollout of 48 simulated nodes


def readme_commands(text: str) -> list[list[str]]:
    """Each command of the README's bash blocks as its words (continuations joined, comments dropped)."""
    commands: list[list[str]] = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(words)
    return commands


def program(words: list[str]) -> str:
    """The program a command runs, after any VAR=value the line sets for it."""
    return next(w for w in words if not re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", w))


@dataclass
class Reader:
    """Runs the README's flotilla commands and fills in its placeholders from what they printed."""

    state: Path
    filled: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOTILLA_", "OTEL_"))}
        return {**env, "FLOTILLA_STATE_DIR": str(self.state)}

    def flotilla(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [FLOTILLA, *args], cwd=ROOT, env=self.env(), capture_output=True, text=True, timeout=TIMEOUT_S
        )

    def clusters(self) -> list[dict[str, Any]]:
        done = self.flotilla("clusters", "list", "-o", "json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)  # type: ignore[no-any-return]

    def pending_cluster(self) -> str | None:
        return next((c["cluster_id"] for c in self.clusters() if c["state"] == "Pending"), None)

    def fill(self, word: str) -> str:
        if word == "CLUSTER" and word not in self.filled:
            found = eventually_sync(self.pending_cluster, "a Pending cluster to approve", timeout_s=60)
            self.filled[word] = str(found)
        if word in ("TOKEN", "ID", "CLUSTER"):
            assert word in self.filled, f"the README uses {word} before a command that prints it"
            return self.filled[word]
        return word

    def run(self, words: list[str]) -> subprocess.CompletedProcess[str]:
        args = [self.fill(w) for w in words[1:]]
        if "up" in args[:1]:
            args += ["--port", str(free_port()), "--monitor-port", "0"]
        started = time.monotonic()
        done = self.flotilla(*args)
        print(f"{time.monotonic() - started:6.1f}s  {shlex.join(words)}")  # shown when the test fails
        assert done.returncode == 0, f"`{shlex.join(words)}` exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        if args[:2] == ["token", "create"]:
            self.filled["TOKEN"] = done.stdout.strip()
        if args[:2] == ["upgrade", "start"]:
            found = re.search(r"rollout (\S+) started", done.stdout)
            assert found, done.stdout
            self.filled["ID"] = found.group(1)
        return done


@pytest.fixture
def reader(tmp_path: Path) -> Iterator[Reader]:
    reader = Reader(tmp_path / "fleet")
    try:
        yield reader
    finally:
        if (reader.state / "run.json").exists():  # the README ends with `down`; this is for a run that failed
            reader.flotilla("down")


def test_readme_commands_have_known_programs() -> None:
    commands = readme_commands((ROOT / "README.md").read_text(encoding="utf-8"))
    unknown = [shlex.join(c) for c in commands if program(c) != RUN and program(c) not in SKIPPED]
    assert not unknown, f"README commands this test neither runs nor skips with a reason: {unknown}"
    assert sum(program(c) == RUN for c in commands) >= 20


@pytest.mark.timeout(TIMEOUT_S)
def test_every_readme_command_works_in_order_on_a_fresh_fleet(reader: Reader) -> None:
    ran: dict[str, subprocess.CompletedProcess[str]] = {}
    for words in readme_commands((ROOT / "README.md").read_text(encoding="utf-8")):
        if program(words) == RUN:
            ran[shlex.join(words[1:4])] = reader.run(words)
    # a few things a reader would look at on the way
    assert "rollout" in ran["upgrade watch ID"].stdout and "Succeeded" in ran["upgrade watch ID"].stdout
    assert re.search(r"^trace [0-9a-f]{32}", ran["--trace upgrade list"].stderr, flags=re.MULTILINE)
    assert not (reader.state / "run.json").exists()  # `down` left nothing running
