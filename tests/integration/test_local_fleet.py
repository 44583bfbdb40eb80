"""`flotilla up/status/logs/restart/down` as a user runs them: real processes, a real nats-server, a supervisor
that restarts what dies, nothing left behind."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import nats
import psutil
import pytest

from flotilla_client import runfile
from flotilla_client.natsserver import free_port
from flotilla_contracts.subjects import Service
from flotilla_runtime import logins
from flotilla_testkit import eventually_sync

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
    supervisor = [run["supervisor"]["pid"]] if run.get("supervisor") else []
    return [*supervisor, run["nats"]["pid"], *(s["pid"] for s in run["services"]), *(s["pid"] for s in run["sims"])]


def run_json(state: Path) -> dict[str, Any]:
    return json.loads((state / "run.json").read_text())  # type: ignore[no-any-return]


def entry(state: Path, name: str) -> dict[str, Any]:
    """A process's entry in run.json: nats-server, a service, or sim:<prefix>."""
    run = run_json(state)
    if name == "nats-server":
        return run["nats"]  # type: ignore[no-any-return]
    if name.startswith("sim:"):
        return next(s for s in run["sims"] if s["prefix"] == name[4:])
    return next(s for s in run["services"] if s["name"] == name)


def restarted(state: Path, name: str, old_pid: int) -> dict[str, Any] | None:
    """The entry once the supervisor has recorded a new, live, running process in place of `old_pid`."""
    found = entry(state, name)
    pid = found["pid"]
    running = found["supervision"]["state"] == "running" and pid not in (0, old_pid) and not gone(pid)
    return found if running else None


def kill9(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    eventually_sync(lambda: gone(pid), f"pid {pid} to die")


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
    status = json.loads(result.stdout)
    services = status["services"]
    assert sorted(s["name"] for s in services) == FIVE
    local = status["local"]
    assert local["state_dir"] == str(fleet.state) and local["supervisor"]["running"]
    assert [p["name"] for p in local["processes"]] == ["nats-server", *(s.value for s in Service)]
    assert all(p["state"] == "running" and p["pid"] and p["last_exit"] is None for p in local["processes"])
    for service in services:
        assert service["version"] and service["id"]
        assert service["uptime_s"] is not None and service["uptime_s"] >= 0
        assert service["health"].startswith("http://127.0.0.1:")


def test_status_table_shows_a_row_per_service(fleet: Fleet) -> None:
    result = flotilla(fleet.state, "status")
    assert result.returncode == 0, result.stderr
    discovered, _, local = result.stdout.partition("\n\n")
    lines = discovered.splitlines()
    assert lines[1].split()[:3] == ["SERVICE", "VERSION", "ID"]
    assert sorted(line.split()[0] for line in lines[2:]) == FIVE
    head, columns, *rows = local.splitlines()
    assert f"local fleet in {fleet.state}: supervisor pid" in head
    assert columns.split() == ["PROCESS", "PID", "STATE", "UPTIME", "RESTARTS", "ASKED", "LAST", "EXIT"]
    assert sorted(row.split()[0] for row in rows) == sorted(["nats-server", *FIVE])


async def test_a_plain_nats_client_gets_five_ping_replies(fleet: Fleet) -> None:
    nc = await logins.connect(fleet.url)
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


def test_a_service_killed_with_sigkill_comes_back(fleet: Fleet) -> None:
    old = entry(fleet.state, "heartbeat")
    assert old["supervision"]["restarts"] == 0
    kill9(old["pid"])
    new = eventually_sync(lambda: restarted(fleet.state, "heartbeat", old["pid"]), "heartbeat to be restarted")
    supervision = new["supervision"]
    assert supervision["restarts"] == 1 and supervision["requested_restarts"] == 0
    assert supervision["last_exit"]["status"] == "signal SIGKILL" and supervision["last_exit"]["pid"] == old["pid"]
    assert not supervision["last_exit"]["requested"]
    assert new["instance_id"] != old["instance_id"]
    # It answers its info command again, as the new instance.
    info = eventually_sync(
        lambda: (
            (done := flotilla(fleet.state, "publish", "fleet.v1.cmd.heartbeat.info", "{}", "--request"))
            and done.returncode == 0
            and done
        ),
        "heartbeat to answer info",
    )
    assert json.loads(info.stdout)["ok"] is True
    # `flotilla status` shows the restart and how the old process ended.
    status = json.loads(flotilla(fleet.state, "status", "-o", "json").stdout)
    row = next(p for p in status["local"]["processes"] if p["name"] == "heartbeat")
    assert row["pid"] == new["pid"] and row["restarts"] == 1 and row["last_exit"]["status"] == "signal SIGKILL"
    assert any(s["name"] == "heartbeat" and s["id"] == new["instance_id"] for s in status["services"])
    table = flotilla(fleet.state, "status").stdout
    line = next(line for line in table.splitlines() if line.startswith("heartbeat") and "SIGKILL" in line)
    assert line.split()[4:6] == ["1", "0"]  # RESTARTS, ASKED
    # Both logs say what happened: the service's own (in its JSON format) and the supervisor's.
    said = f"pid {old['pid']} exited with signal SIGKILL; starting again in 0.5s"
    ours = [json.loads(x) for x in (fleet.state / "logs" / "heartbeat.log").read_text().splitlines()]
    assert any(said in x["msg"] and x["service"] == "heartbeat" for x in ours)
    assert said in (fleet.state / "logs" / "supervisor.log").read_text()


def test_nats_server_killed_comes_back_on_its_port_with_its_jetstream_data(fleet: Fleet) -> None:
    token = flotilla(fleet.state, "token", "create", "--description", "survives a nats-server kill")
    assert token.returncode == 0, token.stderr

    def token_events() -> int:
        done = flotilla(fleet.state, "events", "--subject", "token.>", "-o", "json")
        return sum("survives a nats-server kill" in line for line in done.stdout.splitlines())

    eventually_sync(token_events, "the TokenCreated event in FLEET_EVENTS")
    old = entry(fleet.state, "nats-server")
    kill9(old["pid"])
    new = eventually_sync(lambda: restarted(fleet.state, "nats-server", old["pid"]), "nats-server to be restarted")
    assert new["port"] == fleet.port and new["config"] == old["config"]
    assert new["supervision"]["restarts"] == 1
    assert new["supervision"]["last_exit"]["status"] == "signal SIGKILL"
    assert str(fleet.state / "nats" / "nats-server.conf") in " ".join(psutil.Process(new["pid"]).cmdline())
    assert token_events() == 1  # the stream, and the event in it, from the same JetStream folder
    # Every service reconnects to it.
    eventually_sync(
        lambda: (
            sorted(s["name"] for s in json.loads(flotilla(fleet.state, "status", "-o", "json").stdout)["services"])
            == FIVE
        ),
        "the five services to answer through the new nats-server",
    )
    assert (
        "exited with signal SIGKILL; starting again in 0.5s" in (fleet.state / "logs" / "nats-server.log").read_text()
    )


def test_restart_asked_for_gives_a_new_process_and_is_not_a_crash(fleet: Fleet) -> None:
    old = entry(fleet.state, "scheduler")
    result = flotilla(fleet.state, "restart", "scheduler")
    assert result.returncode == 0, result.stderr
    new = entry(fleet.state, "scheduler")
    assert f"pid {old['pid']} stopped, pid {new['pid']} started" in result.stdout
    assert f"answers $SRV.PING as instance {new['instance_id']}" in result.stdout
    assert new["pid"] != old["pid"] and not gone(new["pid"]) and gone(old["pid"])
    supervision = new["supervision"]
    assert supervision["restarts"] == 0 and supervision["requested_restarts"] == 1
    assert supervision["last_exit"]["requested"] and supervision["last_exit"]["status"] == "code 0"
    info = flotilla(fleet.state, "publish", "fleet.v1.cmd.scheduler.info", "{}", "--request")
    assert info.returncode == 0 and json.loads(info.stdout)["ok"] is True


def test_restart_refuses_unknown_names_and_explains_itself(fleet: Fleet) -> None:
    for name in ("schedulr", "sim", "sim:nope"):
        result = flotilla(fleet.state, "restart", name)
        assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
        assert f"no process {name!r}" in result.stderr and "scheduler" in result.stderr
    helped = flotilla(fleet.state, "restart", "--help")
    assert "flotilla restart scheduler" in helped.stdout and "sim:PREFIX" in helped.stdout


def test_a_sim_started_after_up_is_supervised_too(fleet: Fleet) -> None:
    started = flotilla(fleet.state, "sim", "--clusters", "1", "--nodes", "1", "--prefix", "sup", "--no-wait")
    assert started.returncode == 0, started.stderr
    old = eventually_sync(lambda: restarted(fleet.state, "sim:sup", 0), "the sim to run")
    assert f"(pid {old['pid']}," in started.stdout
    kill9(old["pid"])
    new = eventually_sync(lambda: restarted(fleet.state, "sim:sup", old["pid"]), "the sim to be restarted")
    assert new["supervision"]["restarts"] == 1
    again = flotilla(fleet.state, "sim", "--clusters", "1", "--prefix", "sup", "--no-wait")
    assert again.returncode == 1 and "already runs" in again.stderr


def test_state_files_are_private(fleet: Fleet) -> None:
    """Every file (passwords, databases and their WAL, journals with credentials, logs, JetStream) is the owner's
    only, every folder 0700: walked after the services and a sim have written everything they write."""
    expected = [
        "run.json", "auth/bus.json", "nats/nats-server.conf", "supervisor.sock", "logs/registration.log",
        "registration/registration.db", "registration/registration.db-wal", "sim-sup/sup-journal.db",
        "upgrade-orchestrator/upgrade-orchestrator.db", "heartbeat/heartbeat.db", "nats/jetstream",
    ]  # fmt: skip
    journal = fleet.state / "sim-sup" / "sup-journal.db"
    eventually_sync(journal.exists, f"the sim's journal {journal} (log: {fleet.state / 'logs' / 'sim-sup.log'})")
    for name in expected:
        assert (fleet.state / name).exists(), f"{name} is not where this test looks"
    readable = []
    for folder, dirs, files in os.walk(fleet.state):
        for name in dirs:
            if (mode := (Path(folder) / name).stat().st_mode & 0o777) != 0o700:
                readable.append(f"{Path(folder) / name}/ {mode:o}")
        for name in files:
            with contextlib.suppress(FileNotFoundError):  # a WAL checkpoint may remove one meanwhile
                if (mode := (Path(folder) / name).stat().st_mode & 0o077) != 0:
                    readable.append(f"{Path(folder) / name} {mode:o}")
    assert fleet.state.stat().st_mode & 0o777 == 0o700
    assert readable == [], "readable by group or others:\n" + "\n".join(readable)


def test_with_its_supervisor_killed_the_fleet_says_so_and_down_still_stops_everything(fleet: Fleet) -> None:
    supervisor = run_json(fleet.state)["supervisor"]["pid"]
    kill9(supervisor)
    status = json.loads(flotilla(fleet.state, "status", "-o", "json").stdout)
    assert status["local"]["supervisor"] == {**status["local"]["supervisor"], "pid": supervisor, "running": False}
    assert "supervisor is NOT running" in flotilla(fleet.state, "status").stdout
    restart = flotilla(fleet.state, "restart", "scheduler")
    assert restart.returncode == 1 and "supervisor of the local fleet" in restart.stderr
    assert "flotilla down" in restart.stderr
    # test_down_stops_everything_and_leaves_no_process (next) stops the processes it left behind.


def test_down_stops_everything_and_leaves_no_process(fleet: Fleet) -> None:
    pids = recorded_pids(fleet.state)
    result = flotilla(fleet.state, "down")
    assert result.returncode == 0, result.stderr
    assert not (fleet.state / "run.json").exists()
    assert [pid for pid in pids if not gone(pid)] == []
    assert processes_mentioning(str(fleet.state)) == []
    again = flotilla(fleet.state, "down")
    assert again.returncode == 0 and "nothing is running" in again.stdout
    restart = flotilla(fleet.state, "restart", "scheduler")
    assert restart.returncode == 1 and "no local fleet runs from" in restart.stderr and "flotilla up" in restart.stderr


def test_status_without_nats_is_one_clear_error(fleet: Fleet) -> None:
    result = flotilla(fleet.state, "--server", fleet.url, "status")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and fleet.url in result.stderr and "flotilla up" in result.stderr
