"""`flotilla up/status/logs/down` as a user runs them: real processes, a real nats-server, nothing left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import nats
import psutil
import pytest

from flotilla_client import runfile
from flotilla_client.natsserver import free_port
from flotilla_contracts.subjects import Service

pytestmark = pytest.mark.integration

FLOTILLA = str(Path(sys.executable).parent / "flotilla")
FIVE = sorted(s.value for s in Service)


def clean_env() -> dict[str, str]:
    """The user's environment without Flotilla settings that would point the CLI elsewhere."""
    return {k: v for k, v in os.environ.items() if not k.startswith("FLOTILLA_")}


def flotilla(state: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FLOTILLA, "--state-dir", str(state), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env(),
    )


def gone(pid: int) -> bool:
    """Not running: no such process, or an exited one nobody reaped yet."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def processes_mentioning(text: str) -> list[str]:
    """Live processes with `text` in their command line or environment."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid == os.getpid() or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            cmdline = " ".join(proc.cmdline())
            environ = " ".join(f"{k}={v}" for k, v in proc.environ().items())
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if text in cmdline or text in environ:
            found.append(f"pid {proc.pid}: {cmdline[:120]}")
    return found


def recorded_pids(state: Path) -> list[int]:
    run = json.loads((state / "run.json").read_text())
    return [run["nats"]["pid"], *(s["pid"] for s in run["services"])]


@dataclass
class Fleet:
    state: Path
    port: int
    up: subprocess.CompletedProcess[str]

    @property
    def url(self) -> str:
        """The admin URL `flotilla up` recorded (the bus has authentication on)."""
        return runfile.server_url(self.state) or f"nats://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    state = tmp_path_factory.mktemp("fleet") / "state"
    port = free_port()
    pids: list[int] = []
    try:
        result = flotilla(state, "up", "--port", str(port), "--monitor-port", "0", "--timeout", "30")
        assert result.returncode == 0, f"flotilla up failed:\n{result.stdout}\n{result.stderr}"
        pids = recorded_pids(state)
        yield Fleet(state, port, result)
    finally:
        if (state / "run.json").exists():
            pids = pids or recorded_pids(state)
            flotilla(state, "down", "--timeout", "5")
        for pid in pids:
            if not gone(pid):
                psutil.Process(pid).kill()


def test_up_says_where_everything_is(fleet: Fleet) -> None:
    out = fleet.up.stdout
    assert f"nats://admin:***@127.0.0.1:{fleet.port}" in out  # the address, its password masked
    password = fleet.url.split(":")[2].split("@")[0]
    assert password not in out
    assert str(fleet.state / "auth" / "bus.json") in out
    assert str(fleet.state) in out
    assert str(fleet.state / "logs") in out
    for hint in ("status", "events --follow", "logs registration", "down"):
        assert hint in out
    for service in FIVE:
        assert service in out


def test_status_json_lists_exactly_the_five_services(fleet: Fleet) -> None:
    result = flotilla(fleet.state, "status", "-o", "json")
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)
    assert sorted(s["name"] for s in services) == FIVE
    for service in services:
        assert service["version"] and service["id"]
        assert service["uptime_s"] is not None and service["uptime_s"] >= 0
        assert service["health"].startswith("http://127.0.0.1:")


def test_status_table_shows_a_row_per_service(fleet: Fleet) -> None:
    result = flotilla(fleet.state, "status")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1].split()[:3] == ["SERVICE", "VERSION", "ID"]
    assert sorted(line.split()[0] for line in lines[2:]) == FIVE


async def test_a_plain_nats_client_gets_five_ping_replies(fleet: Fleet) -> None:
    nc = await nats.connect(fleet.url)
    try:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        await nc.publish("$SRV.PING", b"", reply=inbox)
        names = []
        while True:
            try:
                msg = await sub.next_msg(timeout=1.0)
            except nats.errors.TimeoutError:
                break
            names.append(msgspec.json.decode(msg.data)["name"])
    finally:
        await nc.close()
    assert sorted(names) == FIVE


def test_a_second_up_is_refused_while_one_runs(fleet: Fleet) -> None:
    result = flotilla(fleet.state, "up", "--port", str(free_port()), "--monitor-port", "0")
    assert result.returncode != 0
    assert "already running" in result.stderr
    assert str(fleet.state) in result.stderr and "flotilla down" in result.stderr
    assert "Traceback" not in result.stderr


def test_logs_shows_the_service_log(fleet: Fleet) -> None:
    result = flotilla(fleet.state, "logs", "registration", "-n", "50")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines and all(line["service"] == "registration" for line in lines)
    assert any("serving" in line["msg"] for line in lines)


def test_logs_refuses_an_unknown_service(fleet: Fleet) -> None:
    result = flotilla(fleet.state, "logs", "nope")
    assert result.returncode != 0 and "registration" in result.stderr


def test_down_stops_everything_and_leaves_no_process(fleet: Fleet) -> None:
    pids = recorded_pids(fleet.state)
    result = flotilla(fleet.state, "down")
    assert result.returncode == 0, result.stderr
    assert not (fleet.state / "run.json").exists()
    assert [pid for pid in pids if not gone(pid)] == []
    assert processes_mentioning(str(fleet.state)) == []
    again = flotilla(fleet.state, "down")
    assert again.returncode == 0 and "nothing is running" in again.stdout


def test_status_without_nats_is_one_clear_error(fleet: Fleet) -> None:
    result = flotilla(fleet.state, "--server", fleet.url, "status")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and fleet.url in result.stderr and "flotilla up" in result.stderr
