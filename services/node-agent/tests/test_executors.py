"""Executors against fake binaries that record their calls and can fail (no host is touched)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from flotilla_contracts.v1.agent import KubeadmAction, TargetVersions
from flotilla_contracts.v1.common import NodeRole
from flotilla_node_agent.executors.base import CommandRunner, ExecutorError
from flotilla_node_agent.executors.kubeadm import KubeadmExecutor, PackageManager
from flotilla_node_agent.executors.script import ScriptExecutor

FAKE = """#!/bin/sh
# Records "<name> <args>" and keeps a tiny host state: the installed kubeadm and kubelet versions.
name=$(basename "$0")
echo "$name $*" >> "$FAKE_HOST/calls.log"
if [ -n "$FAIL_ON" ] && echo "$name $*" | grep -q -- "$FAIL_ON"; then echo "simulated failure of $name" >&2; exit 3; fi
case "$name $1" in
  "apt-get install"|"dnf install")
    for arg in "$@"; do
      case "$arg" in kubeadm=*|kubeadm-*) v=${arg#kubeadm?}; echo "${v%-\\*}" > "$FAKE_HOST/kubeadm";;
                     kubelet=*|kubelet-*) v=${arg#kubelet?}; echo "${v%-\\*}" > "$FAKE_HOST/kubelet";; esac
    done;;
  "kubeadm version") echo "v$(cat "$FAKE_HOST/kubeadm")";;
  "kubelet --version") echo "Kubernetes v$(cat "$FAKE_HOST/kubelet")";;
esac
exit 0
"""


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("apt-get", "apt-mark", "dnf", "kubeadm", "kubelet", "systemctl", "upgrade.sh"):
        path = bin_dir / name
        path.write_text(FAKE)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    (tmp_path / "kubeadm").write_text("1.29.6\n")
    (tmp_path / "kubelet").write_text("1.29.6\n")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_HOST", str(tmp_path))
    monkeypatch.delenv("FAIL_ON", raising=False)
    return tmp_path


def calls(host: Path) -> list[str]:
    return (host / "calls.log").read_text().splitlines()


TARGET = TargetVersions(kubernetes_version="v1.30.2")


async def test_first_control_plane_runs_upgrade_apply_then_kubelet_and_restart(host: Path) -> None:
    executor = KubeadmExecutor(CommandRunner())
    assert await executor.upgrade(TARGET, KubeadmAction.APPLY, NodeRole.CONTROL_PLANE) is True
    assert calls(host) == [
        "kubelet --version",
        "apt-mark unhold kubeadm",
        "apt-get update",
        "apt-get install -y --allow-downgrades kubeadm=1.30.2-*",
        "apt-mark hold kubeadm",
        "kubeadm version -o short",
        "kubeadm upgrade apply -y v1.30.2",
        "apt-mark unhold kubelet kubectl",
        "apt-get update",
        "apt-get install -y --allow-downgrades kubelet=1.30.2-* kubectl=1.30.2-*",
        "apt-mark hold kubelet kubectl",
        "systemctl daemon-reload",
        "systemctl restart kubelet",
    ]


async def test_other_nodes_run_upgrade_node_and_a_repeat_changes_nothing(host: Path) -> None:
    executor = KubeadmExecutor(CommandRunner(), PackageManager.DNF)
    await executor.upgrade(TARGET, KubeadmAction.NODE, NodeRole.WORKER)
    assert "kubeadm upgrade node" in calls(host)
    assert "dnf install -y kubeadm-1.30.2 --disableexcludes=kubernetes" in calls(host)
    before = len(calls(host))
    assert await executor.upgrade(TARGET, KubeadmAction.NODE, NodeRole.WORKER) is False
    assert calls(host)[before:] == ["kubelet --version"]


async def test_the_command_prefix_wraps_every_call(host: Path) -> None:
    wrapper = host / "bin" / "nsenter"
    wrapper.write_text('#!/bin/sh\necho "nsenter $*" >> "$FAKE_HOST/calls.log"\nshift 6\nexec "$@"\n')
    wrapper.chmod(0o755)
    runner = CommandRunner.from_setting("nsenter --target 1 --mount --uts --ipc --")
    await KubeadmExecutor(runner).upgrade(TARGET, None, NodeRole.WORKER)
    wrapped = [c for c in calls(host) if c.startswith("nsenter")]
    assert wrapped[0] == "nsenter --target 1 --mount --uts --ipc -- kubelet --version"
    assert "nsenter --target 1 --mount --uts --ipc -- kubeadm upgrade node" in wrapped


async def test_a_failing_command_fails_the_upgrade_naming_it(host: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAIL_ON", "kubeadm upgrade")
    with pytest.raises(ExecutorError, match=r"kubeadm upgrade apply -y v1.30.2 exited with 3: simulated failure"):
        await KubeadmExecutor(CommandRunner()).upgrade(TARGET, KubeadmAction.APPLY, NodeRole.CONTROL_PLANE)
    assert "systemctl restart kubelet" not in calls(host)


async def test_apply_is_refused_on_a_worker(host: Path) -> None:
    with pytest.raises(ExecutorError, match="first control-plane"):
        await KubeadmExecutor(CommandRunner()).upgrade(TARGET, KubeadmAction.APPLY, NodeRole.WORKER)


async def test_the_script_gets_the_versions_as_arguments(host: Path) -> None:
    target = TargetVersions(kubernetes_version="v1.30.2", kubelet_version="v1.30.1")
    await ScriptExecutor(CommandRunner(), "upgrade.sh --yes").upgrade(target, None, NodeRole.WORKER)
    assert calls(host)[-1] == "upgrade.sh --yes 1.30.2 1.30.2 1.30.1 1.30.2 node worker"


async def test_a_slow_command_times_out(host: Path) -> None:
    slow = host / "bin" / "slow"
    slow.write_text("#!/bin/sh\nsleep 5\n")
    slow.chmod(0o755)
    with pytest.raises(ExecutorError, match="did not finish within"):
        await CommandRunner(timeout_s=0.2).run(["slow"])
