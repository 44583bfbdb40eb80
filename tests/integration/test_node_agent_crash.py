"""SIGKILL of the node-agent process at every step boundary: after each restart it converges, each step
takes effect once, and the node is uncordoned exactly once (I4, I8, I9, I10).

The agent runs as its own OS process (`python -m flotilla_node_agent`) with the sim driver keeping the
node in a file and the kubeadm executor running fake host binaries that record their calls. The crash
points kill the process with SIGKILL from inside, right before and right after a step's side effect,
once each (the node file remembers which already fired).
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
from pathlib import Path

import pytest

from flotilla_client.natsserver import NatsServer
from flotilla_contracts.subjects import Service
from flotilla_contracts.v1.agent import KubeadmAction, StepKind, StepOutcome
from flotilla_runtime import logins
from flotilla_runtime.bus import ensure_streams
from flotilla_testkit import ConditionNotMet, eventually

from .conftest import start_service
from .node_agent_support import STEPS, Watch, send, step_command

pytestmark = pytest.mark.integration

CRASH_AT = "cordon:after,drain:before,drain:after,upgrade:after,uncordon:before,uncordon:after"
FAKE = """#!/bin/sh
echo "$(basename "$0") $*" >> "$FAKE_HOST/calls.log"
case "$(basename "$0") $1" in
  "kubeadm version") echo "v1.30.2";;
  "kubelet --version") echo "Kubernetes v$(cat "$FAKE_HOST/kubelet" 2>/dev/null || echo 1.29.6)";;
  "apt-get install") case "$*" in *kubelet=*) echo 1.30.2 > "$FAKE_HOST/kubelet";; esac;;
esac
"""


def fake_host(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "host-bin"
    bin_dir.mkdir()
    for name in ("apt-get", "apt-mark", "kubeadm", "kubelet", "systemctl"):
        (bin_dir / name).write_text(FAKE)
        (bin_dir / name).chmod(0o755 | stat.S_IEXEC)
    return bin_dir


async def test_sigkill_at_every_step_boundary_converges_with_one_uncordon(
    nats_server: NatsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", f"{fake_host(tmp_path)}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_HOST", str(tmp_path))
    node_file = tmp_path / "node.json"
    repo_file = tmp_path / "kubernetes.list"  # the executor moves it to the target minor before installing
    repo_file.write_text("deb https://pkgs.k8s.io/core:/stable:/v1.29/deb/ /\n")
    settings = {
        "node_name": "n1",
        "cluster_id": "c1",
        "driver": "sim",
        "executor": "kubeadm",
        "package_repo_file": str(repo_file),
        "sim_state_path": str(node_file),
        "sim_crash_at": CRASH_AT,
        "sim_step_s": "0.05",
        "ack_wait_s": "1.5",
        "fetch_timeout_s": "1",
        "verify_timeout_s": "5",
    }
    nc = await logins.connect(nats_server.url)
    await ensure_streams(nc.jetstream())
    watch = Watch()
    await watch.start(nc)
    starts = 0

    def launch() -> subprocess.Popen[bytes]:
        nonlocal starts
        starts += 1
        return start_service(Service.NODE_AGENT, nats_server.url, tmp_path, **settings)

    proc = launch()
    kills = 0
    try:
        for step in STEPS:
            await send(nc, step_command(step, kubeadm_action=KubeadmAction.NODE), ack_wait_s=1.5)

            def finished(done_step: StepKind = step) -> bool:
                """Whether the step has a final report; restarts the agent each time its crash point killed it."""
                nonlocal proc, kills
                if watch.final(done_step):
                    return True
                if proc.poll() is not None:
                    assert proc.returncode == -signal.SIGKILL, f"agent exited with {proc.returncode}"
                    kills += 1
                    proc = launch()
                return False

            try:
                await eventually(finished, f"{step} to finish", timeout_s=30)
            except ConditionNotMet as late:
                raise AssertionError(f"{late}; log: {(tmp_path / 'node-agent.log').read_text()[-3000:]}") from late
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(15)
        await nc.close()

    assert kills == len(CRASH_AT.split(",")), "every crash point fired once"
    outcomes = {step: [r.outcome for r in watch.final(step)] for step in STEPS}
    assert all(found and set(found) == {StepOutcome.SUCCEEDED} for found in outcomes.values()), outcomes
    node = json.loads(node_file.read_text())
    assert node["kubelet_version"] == "v1.30.2" and node["unschedulable"] is False
    assert node["effects"] == {"cordon": 1, "drain": 1, "upgrade": 1, "uncordon": 1}
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert calls.count("kubeadm upgrade node") == 1, calls
    assert calls.count("systemctl restart kubelet") == 1
    assert "/v1.30/deb/" in repo_file.read_text(), "the package repository was moved to the target minor"
