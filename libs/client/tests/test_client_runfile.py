"""run.json handling and telling live processes from dead, zombie or recycled ones."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from flotilla_client import control, localfleet, localup, procs, runfile
from flotilla_client.errors import LocalFleetError
from flotilla_client.runfile import NatsEntry, RunInfo, ServiceEntry
from flotilla_testkit import eventually_sync


def sleeper() -> subprocess.Popen[bytes]:
    """A child running `time.sleep`, returned once its command line says so.

    Until the child has exec'd, /proc shows the parent's command line; under load that window is long enough
    for procs.alive(pid, "time.sleep") to say no, so the tests wait for the exec (a condition, not a sleep).
    """
    # sleep: the child is only a long-lived process to find by its command line
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    eventually_sync(
        lambda: "time.sleep" in (procs.cmdline(child.pid) or "time.sleep"),
        "the sleeper to exec",
        timeout_s=30,
        every_s=0.01,
    )
    return child


def info_with(pid: int, state: Path, module: str = "-c") -> RunInfo:
    entry = ServiceEntry(
        name="registration",
        module=module,
        pid=pid,
        instance_id="abc",
        http_port=1,
        health_url="http://127.0.0.1:1",
        log=str(state / "logs" / "registration.log"),
        state_dir=str(state / "registration"),
    )
    return RunInfo(
        state_dir=str(state), started_at="2025-01-01T00:00:00Z", nats=NatsEntry(url="nats://x:1"), services=[entry]
    )


def test_run_file_round_trips_and_gives_the_server_url(tmp_path: Path) -> None:
    info = info_with(123, tmp_path)
    runfile.save(tmp_path, info)
    loaded = runfile.load(tmp_path)
    assert loaded is not None and loaded.services[0].pid == 123 and loaded.nats.external
    assert runfile.server_url(tmp_path) == "nats://x:1"
    runfile.remove(tmp_path)
    assert runfile.load(tmp_path) is None and runfile.server_url(tmp_path) is None


def test_damaged_run_file_is_a_clear_error(tmp_path: Path) -> None:
    runfile.run_file(tmp_path).write_text("{not json")
    with pytest.raises(LocalFleetError, match=r"run.json is damaged"):
        runfile.load(tmp_path)
    assert runfile.server_url(tmp_path) is None


def test_alive_for_a_running_process_and_not_after_it_exits() -> None:
    child = sleeper()
    try:
        assert procs.alive(child.pid, "time.sleep")
        assert not procs.alive(child.pid, "flotilla_registration"), "a recycled pid runs something else"
    finally:
        child.kill()
        child.wait()
    assert not procs.alive(child.pid)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="zombies are told apart through /proc")
def test_a_zombie_is_not_alive() -> None:
    child = sleeper()
    child.kill()
    try:
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited but not reaped: a zombie
        assert not procs.alive(child.pid)
    finally:
        child.wait()


def test_stale_run_file_is_removed_and_a_live_one_refuses(tmp_path: Path) -> None:
    child = sleeper()
    runfile.save(tmp_path, info_with(child.pid, tmp_path, module="time.sleep"))
    try:
        with pytest.raises(LocalFleetError, match=r"already running .*flotilla down"):
            localfleet.check_not_running(tmp_path, lambda _line: None)
        assert runfile.load(tmp_path) is not None
    finally:
        child.kill()
        child.wait()
    said: list[str] = []
    localfleet.check_not_running(tmp_path, said.append)
    assert runfile.load(tmp_path) is None
    assert "stale" in said[0]


def test_stop_terminates_and_reports_nothing_left() -> None:
    child = sleeper()
    try:
        killed, alive = procs.stop([procs.Tracked("sleeper", child.pid, "time.sleep")], timeout_s=5)
        assert child.wait(5) is not None
        assert killed == [] and alive == []
    finally:
        child.kill()


def test_up_refuses_a_taken_port_naming_the_flag(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(LocalFleetError, match=rf"port {port} .*already in use.*--port"):
            localup.up(localup.UpOptions(state_dir=tmp_path, port=port, monitor_port=0), lambda _line: None)
        assert runfile.load(tmp_path) is None


def test_tail_returns_the_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert localfleet.tail(log, 3) == ["line 97", "line 98", "line 99"]
    assert localfleet.tail(tmp_path / "missing.log", 3) == []


def test_update_changes_the_file_under_a_lock_and_keeps_it_private(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert runfile.update(state, lambda _info: None) is None  # nothing to change: not created
    runfile.save(state, info_with(123, state))
    changed = runfile.update(state, lambda info: setattr(info.services[0].supervision, "restarts", 2))
    loaded = runfile.load(state)
    assert changed is not None and loaded is not None and loaded.services[0].supervision.restarts == 2
    assert (runfile.run_file(state).stat().st_mode & 0o777) == 0o600
    assert (state.stat().st_mode & 0o777) == 0o700


def test_a_run_file_without_supervision_fields_still_loads(tmp_path: Path) -> None:
    old = {"state_dir": str(tmp_path), "started_at": "2025-01-01T00:00:00Z", "nats": {"url": "nats://x:1"}}
    runfile.run_file(tmp_path).write_text(json.dumps(old))
    loaded = runfile.load(tmp_path)
    assert loaded is not None and loaded.supervisor is None
    assert loaded.nats.supervision.restarts == 0 and loaded.nats.supervision.last_exit is None


def test_asking_a_supervisor_that_is_not_there_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LocalFleetError, match=r"supervisor .* is not running.*flotilla down"):
        control.ask(tmp_path, control.Request(op=control.Op.RESTART, name="scheduler"))


def test_restart_without_a_fleet_or_of_an_unknown_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LocalFleetError, match=r"no local fleet runs from .*flotilla up"):
        localfleet.restart(tmp_path, "scheduler", 5.0)
    runfile.save(tmp_path, info_with(123, tmp_path))
    with pytest.raises(LocalFleetError, match=r"no process 'sim' .*no simulated fleet runs.*registration"):
        localfleet.restart(tmp_path, "sim", 5.0)
    with pytest.raises(LocalFleetError, match=r"no process 'schedule' .*choose one of .*scheduler"):
        localfleet.restart(tmp_path, "schedule", 5.0)


def test_the_control_socket_works_in_a_folder_whose_path_is_too_long_for_a_socket(tmp_path: Path) -> None:
    folder = tmp_path / ("x" * 60) / ("y" * 60)
    folder.mkdir(parents=True)
    path = control.socket_path(folder)
    assert len(str(path)) > 108
    with socket.socket(socket.AF_UNIX) as server, socket.socket(socket.AF_UNIX) as client:
        with control.reachable_path(path) as address:
            server.bind(address)
        server.listen()
        with control.reachable_path(path) as address:
            client.connect(address)
        assert path.exists()
