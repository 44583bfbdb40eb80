"""Detached child processes: start one with its log file, tell whether a pid is still ours, stop a group."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class Tracked:
    """A process we started: a label for messages, its pid, and a string its command line must contain."""

    label: str
    pid: int
    marker: str


def spawn(
    command: Sequence[str], log_path: Path, env: Mapping[str, str], cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start detached (own session, so a Ctrl-C in the terminal does not reach it), output to `log_path`."""
    log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)  # logs may name users and hosts
    with os.fdopen(fd, "ab") as log:
        return subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
            umask=0o077,  # what the child creates (databases, journals, JetStream files) is its owner's only
        )


def _is_zombie(pid: int) -> bool:
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def cmdline(pid: int) -> str | None:
    """The command line of a process (Linux); None where /proc cannot tell."""
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None


def alive(pid: int, marker: str = "") -> bool:
    """True when `pid` runs (not a zombie) and, where /proc tells, its command line contains `marker`.

    The marker guards against a recycled pid: after a reboot run.json may name somebody else's process.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # exists, but not ours: a recycled pid
    if _is_zombie(pid):
        return False
    line = cmdline(pid)
    return not (marker and line is not None and marker not in line)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def wait_gone(tracked: Sequence[Tracked], timeout_s: float) -> list[Tracked]:
    """Wait until none is alive or the time is up; returns those still alive."""
    deadline = time.monotonic() + timeout_s
    left = [t for t in tracked if alive(t.pid, t.marker)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [t for t in left if alive(t.pid, t.marker)]
    return left


def stop(tracked: Sequence[Tracked], timeout_s: float) -> tuple[list[Tracked], list[Tracked]]:
    """SIGTERM each, wait up to `timeout_s`, SIGKILL the stragglers. Returns (killed, still alive)."""
    running = [t for t in tracked if alive(t.pid, t.marker)]
    for t in running:
        _signal(t.pid, signal.SIGTERM)
    stragglers = wait_gone(running, timeout_s)
    for t in stragglers:
        _signal(t.pid, signal.SIGKILL)
    return stragglers, wait_gone(stragglers, 5.0)


def find_by_markers(markers: Sequence[str]) -> list[Tracked]:
    """Every live process whose command line or environment contains one of `markers` (Linux; else none)."""
    found: list[Tracked] = []
    if not PROC.is_dir():
        return found
    me = os.getpid()
    for entry in PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        pid = int(entry.name)
        try:
            # Arguments joined by spaces (as markers are written), environment entries left apart.
            text = (entry / "cmdline").read_bytes().replace(b"\0", b" ") + b"\0" + (entry / "environ").read_bytes()
        except OSError:
            continue
        decoded = text.decode(errors="replace")
        for marker in markers:
            if marker in decoded and alive(pid):
                found.append(Tracked(label=(cmdline(pid) or "?")[:80], pid=pid, marker=""))
                break
    return found
