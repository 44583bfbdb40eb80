"""Starting and stopping the Kubernetes world of a local fleet (`flotilla kube up|down`): the detached
`python -m flotilla_client.kubeworld` process, found again by its command line, and its world.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flotilla_client import procs
from flotilla_client.errors import LocalFleetError
from flotilla_client.kubeworld.processes import bin_dir, check_binaries

MODULE = "flotilla_client.kubeworld"
WORLD_FILE = "world.json"
TOKEN_ENV = "FLOTILLA_KUBE_JOIN_TOKEN"  # the join token travels in the environment, not on the command line
AGENT_MANIFESTS = Path("deploy") / "services" / "node-agent"  # the shipped node-agent manifests, in the repository
Progress = Callable[[str], None]


def world_dir(state_dir: Path) -> Path:
    return state_dir.resolve() / "kube"


def log_file(state_dir: Path) -> Path:
    return state_dir.resolve() / "logs" / "kube-world.log"


def _marker(state_dir: Path) -> str:
    return f"--state-dir {world_dir(state_dir)}"


def running(state_dir: Path) -> list[procs.Tracked]:
    """The world process of this state folder, if one runs."""
    return [t for t in procs.find_by_markers([_marker(state_dir)]) if MODULE in (procs.cmdline(t.pid) or "")]


def load_world(state_dir: Path) -> dict[str, Any] | None:
    """What the running world wrote once it was up: clusters, servers, kubeconfigs, nodes; None before."""
    try:
        data: dict[str, Any] = json.loads((world_dir(state_dir) / WORLD_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return data


def render_agent_manifests(state_dir: Path) -> Path:
    """`kubectl kustomize deploy/services/node-agent` (found from the working directory up) into the world's folder."""
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / AGENT_MANIFESTS).is_dir():
            source = folder / AGENT_MANIFESTS
            break
    else:
        raise LocalFleetError(
            f"cannot find {AGENT_MANIFESTS} from {here}: run from the repository, or use `--agent-identity admin`"
        )
    done = subprocess.run([str(bin_dir() / "kubectl"), "kustomize", str(source)], capture_output=True, timeout=120)
    if done.returncode != 0:
        raise LocalFleetError(f"kubectl kustomize {source} failed: {done.stderr.decode().strip()}")
    out = world_dir(state_dir)
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    (out / "node-agent.yaml").write_bytes(done.stdout)
    return out / "node-agent.yaml"


def start(
    state_dir: Path,
    nats_url: str,
    join_token: str,
    *,
    clusters: int,
    workers: int,
    version: str,
    prefix: str,
    agent_manifests: Path | None,
    timeout_s: float,
    progress: Progress,
) -> dict[str, Any]:
    """Start the world detached and wait until it wrote world.json; LocalFleetError with its log otherwise."""
    check_binaries(bin_dir())
    if running(state_dir):
        raise LocalFleetError(f"a Kubernetes world already runs for {state_dir}; `flotilla kube down` first")
    folder = world_dir(state_dir)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    (folder / WORLD_FILE).unlink(missing_ok=True)
    command = [sys.executable, "-m", MODULE, "--state-dir", str(folder), "--nats-url", nats_url]
    command += ["--clusters", str(clusters), "--workers", str(workers), "--version", version, "--prefix", prefix]
    if agent_manifests is not None:
        command += ["--agent-manifests", str(agent_manifests)]
    env = {**os.environ, TOKEN_ENV: join_token, "FLOTILLA_K8S_BIN": str(bin_dir()), "PYTHONUNBUFFERED": "1"}
    process = procs.spawn(command, log_file(state_dir), env, cwd=folder)
    deadline = time.monotonic() + timeout_s
    while True:
        world = load_world(state_dir)
        if world is not None and world.get("pid") == process.pid:
            return world
        if process.poll() is not None:
            tail = "\n".join(log_file(state_dir).read_text(errors="replace").splitlines()[-15:])
            raise LocalFleetError(f"the Kubernetes world exited {process.returncode} while starting:\n{tail}")
        if time.monotonic() > deadline:
            procs.stop([procs.Tracked("kube world", process.pid, MODULE)], 30.0)
            raise LocalFleetError(
                f"the Kubernetes world did not start within {timeout_s:g}s; see {log_file(state_dir)}"
            )
        try:
            process.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            pass


def stop(state_dir: Path, timeout_s: float, progress: Progress) -> bool:
    """Stop the world (its agents, then its control planes); False when none ran. Raises if it survives."""
    found = running(state_dir)
    if not found:
        return False
    killed, alive = procs.stop(found, timeout_s)
    for t in found:
        how = "STILL RUNNING" if t in alive else "killed (did not stop in time)" if t in killed else "stopped"
        progress(f"  {'kube world':<22} pid {t.pid:<8} {how}")
    if alive:
        raise LocalFleetError(f"could not stop the Kubernetes world (pid {alive[0].pid})")
    return True
