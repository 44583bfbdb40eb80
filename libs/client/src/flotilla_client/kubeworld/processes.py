"""The processes of a local Kubernetes world: where the binaries are, starting one in its own process group,
waiting on a condition while watching for crashes, and stopping a group for good."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok")
BIN_ENV = "FLOTILLA_K8S_BIN"  # where `make k8s-bins` put them; default: .tools/k8s/bin above the working directory
TOOLS = Path(".tools") / "k8s"


class HarnessError(RuntimeError):
    """A component did not come up (or go down) as asked; the message names it and ends with its log."""


def bin_dir() -> Path:
    """FLOTILLA_K8S_BIN, else the first `.tools/k8s/bin` in the working directory or above it (the repository)."""
    if os.environ.get(BIN_ENV):
        return Path(os.environ[BIN_ENV])
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / TOOLS / "bin").is_dir():
            return folder / TOOLS / "bin"
    return Path(__file__).resolve().parents[5] / TOOLS / "bin"  # the repository this package is installed from


def stage_dir(bins: Path) -> Path:
    """kwok's stage files, copied next to the binaries by tools/k8s/build.sh."""
    return bins.parent / "stages"


def check_binaries(bins: Path) -> None:
    missing = [b for b in BINARIES if not (bins / b).exists()]
    if missing or not stage_dir(bins).is_dir():
        what = ", ".join(missing) or "kwok's stage files"
        raise HarnessError(f"missing {what} in {bins.parent}: run `make k8s-bins` (first build ~10 min, then cached)")


@dataclass
class Component:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 25) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start(stack: ExitStack, root: Path, name: str, argv: list[str], *, env: dict[str, str] | None = None) -> Component:
    """Start `argv` in its own session (process group), output to `<root>/<name>.log`; stopped when `stack` closes."""
    log = root / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=root,
            env=env,
            start_new_session=True,
        )
    component = Component(name, process, log)
    stack.callback(stop, component)
    return component


def stop(component: Component, grace_s: float = 15.0) -> None:
    """SIGTERM the process group, SIGKILL it after grace_s, and reap; raise if a member survives."""
    pgid = component.process.pid
    if group_alive(pgid):
        os.killpg(pgid, signal.SIGTERM)
    try:
        component.process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(pgid, signal.SIGKILL)
        component.process.wait(timeout=grace_s)
    if group_alive(pgid):
        os.killpg(pgid, signal.SIGKILL)
    if group_alive(pgid):
        raise HarnessError(f"{component.name}: process group {pgid} still alive after SIGKILL")


def wait_until(what: str, check: Callable[[], bool], watch: list[Component], within_s: float) -> None:
    """Poll `check` until true; between polls wait on the newest process (so a crash ends the wait at once)."""
    deadline = time.monotonic() + within_s
    while not check():
        for c in watch:
            if c.process.poll() is not None:
                raise HarnessError(f"{c.name} exited {c.process.returncode} while waiting for {what}:\n{c.tail()}")
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {c.name}\n{c.tail(10)}" for c in watch)
            raise HarnessError(f"{what} not true within {within_s:.0f} s\n{logs}")
        try:
            watch[-1].process.wait(timeout=0.1)
        except subprocess.TimeoutExpired:
            pass
