"""Executors against fake binaries that record their calls and can fail (no host is touched)."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from flotilla_contracts.v1.agent import KubeadmAction, TargetVersions
from flotilla_contracts.v1.common import NodeRole
from flotilla_node_agent.executors.base import CommandRunner, ExecutorError
from flotilla_node_agent.executors.hostprep import EtcdSnapshots, PackageSource, repository_rewrite
from flotilla_node_agent.executors.kubeadm import KubeadmExecutor, PackageManager, apply_flags
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
  "kubeadm version") echo "v$(tr '~' '-' < "$FAKE_HOST/kubeadm")";;  # a package 1.38.0~rc.1 is v1.38.0-rc.1
  "kubelet --version") echo "Kubernetes v$(tr '~' '-' < "$FAKE_HOST/kubelet")";;
esac
if [ "$name" = etcdctl ]; then for arg in "$@"; do last=$arg; done; : > "$last"; fi
exit 0
"""


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("apt-get", "apt-mark", "dnf", "etcdctl", "kubeadm", "kubelet", "systemctl", "upgrade.sh"):
        path = bin_dir / name
        path.write_text(FAKE)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    (tmp_path / "kubeadm").write_text("1.29.6\n")
    (tmp_path / "kubelet").write_text("1.29.6\n")
    (tmp_path / "kubernetes.list").write_text(APT_REPO)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_HOST", str(tmp_path))
    monkeypatch.delenv("FAIL_ON", raising=False)
    return tmp_path


def calls(host: Path) -> list[str]:
    return (host / "calls.log").read_text().splitlines()


APT_REPO = (
    "deb [signed-by=/etc/apt/keyrings/kubernetes-apt-keyring.gpg] https://pkgs.k8s.io/core:/stable:/v1.29/deb/ /\n"
)


def kubeadm(host: Path, runner: CommandRunner | None = None, **options: Any) -> KubeadmExecutor:
    """An executor whose repository file and snapshot folder are the fake host's."""
    options.setdefault("repo_file", str(host / "kubernetes.list"))
    options.setdefault("etcd_snapshots", EtcdSnapshots(folder=str(host / "snapshots")))
    return KubeadmExecutor(runner or CommandRunner(), **options)


TARGET = TargetVersions(kubernetes_version="v1.30.2")


async def test_first_control_plane_runs_upgrade_apply_then_kubelet_and_restart(host: Path) -> None:
    executor = kubeadm(host)
    assert await executor.upgrade(TARGET, KubeadmAction.APPLY, NodeRole.CONTROL_PLANE) is True
    [snapshot] = list((host / "snapshots").glob("etcd-before-v1.30.2-*.db"))
    assert calls(host) == [
        "kubelet --version",
        "etcdctl --endpoints=https://127.0.0.1:2379 --cacert=/etc/kubernetes/pki/etcd/ca.crt "
        "--cert=/etc/kubernetes/pki/etcd/server.crt --key=/etc/kubernetes/pki/etcd/server.key "
        f"snapshot save {snapshot}",
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
    assert (host / "kubernetes.list").read_text() == APT_REPO.replace("/v1.29/", "/v1.30/"), "the target minor's repo"
    assert (host / "snapshots").stat().st_mode & 0o777 == 0o700


async def test_other_nodes_run_upgrade_node_and_a_repeat_changes_nothing(host: Path) -> None:
    (host / "kubernetes.list").write_text(RPM_REPO)
    executor = kubeadm(host, package_manager=PackageManager.DNF)
    await executor.upgrade(TARGET, KubeadmAction.NODE, NodeRole.WORKER)
    assert (host / "kubernetes.list").read_text() == RPM_REPO.replace("/v1.29/", "/v1.30/")
    assert not (host / "snapshots").exists(), "only the first control plane takes a snapshot"
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
    await kubeadm(host, runner).upgrade(TARGET, None, NodeRole.WORKER)
    wrapped = [c for c in calls(host) if c.startswith("nsenter")]
    assert wrapped[0] == "nsenter --target 1 --mount --uts --ipc -- kubelet --version"
    assert "nsenter --target 1 --mount --uts --ipc -- kubeadm upgrade node" in wrapped


async def test_a_failing_command_fails_the_upgrade_naming_it(host: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAIL_ON", "kubeadm upgrade")
    with pytest.raises(ExecutorError, match=r"kubeadm upgrade apply -y v1.30.2 exited with 3: simulated failure"):
        await kubeadm(host).upgrade(TARGET, KubeadmAction.APPLY, NodeRole.CONTROL_PLANE)
    assert "systemctl restart kubelet" not in calls(host)


async def test_apply_is_refused_on_a_worker(host: Path) -> None:
    with pytest.raises(ExecutorError, match="first control-plane"):
        await kubeadm(host).upgrade(TARGET, KubeadmAction.APPLY, NodeRole.WORKER)


RPM_REPO = (
    "[kubernetes]\nname=Kubernetes\nbaseurl=https://pkgs.k8s.io/core:/stable:/v1.29/rpm/\nenabled=1\n"
    "gpgkey=https://pkgs.k8s.io/core:/stable:/v1.29/rpm/repodata/repomd.xml.key\n"
)


async def test_no_snapshot_no_upgrade(host: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAIL_ON", "etcdctl")
    with pytest.raises(ExecutorError, match=r"no etcd snapshot before the control-plane upgrade.*ETCD_SNAPSHOT_DIR"):
        await kubeadm(host).upgrade(TARGET, KubeadmAction.APPLY, NodeRole.CONTROL_PLANE)
    assert not [c for c in calls(host) if c.startswith(("apt-get install", "kubeadm upgrade"))], "nothing moved"
    assert (host / "kubernetes.list").read_text() == APT_REPO


async def test_external_etcd_takes_no_snapshot(host: Path) -> None:
    await kubeadm(host, etcd_snapshots=None).upgrade(TARGET, KubeadmAction.APPLY, NodeRole.CONTROL_PLANE)
    assert "kubeadm upgrade apply -y v1.30.2" in calls(host)
    assert not [c for c in calls(host) if c.startswith("etcdctl")]


async def test_only_the_newest_snapshots_are_kept(host: Path) -> None:
    snapshots = EtcdSnapshots(folder=str(host / "snapshots"), kept=3)
    for day in range(1, 6):
        await snapshots.save(CommandRunner(), "1.30.2", datetime(2026, 12, day, tzinfo=UTC))
    kept = sorted(p.name for p in (host / "snapshots").iterdir())
    assert kept == [f"etcd-before-v1.30.2-202612{day:02d}T000000Z.db" for day in (3, 4, 5)]


async def test_a_repository_file_without_pkgs_k8s_io_stops_before_installing(host: Path) -> None:
    (host / "kubernetes.list").write_text("deb https://mirror.example/kubernetes/ stable main\n")
    with pytest.raises(ExecutorError, match=r"names no pkgs\.k8s\.io/core:/ repository.*PACKAGE_SOURCE=fixed"):
        await kubeadm(host).upgrade(TARGET, KubeadmAction.NODE, NodeRole.WORKER)
    assert not [c for c in calls(host) if c.startswith("apt-get install")]
    await kubeadm(host, package_source=PackageSource.FIXED).upgrade(TARGET, KubeadmAction.NODE, NodeRole.WORKER)
    assert (host / "kubernetes.list").read_text() == "deb https://mirror.example/kubernetes/ stable main\n"
    assert "kubeadm upgrade node" in calls(host)


def test_the_repository_moves_to_the_target_minor_in_either_direction() -> None:
    pattern = r"s#(pkgs\.k8s\.io/core:/)(stable|prerelease):/v[0-9]+\.[0-9]+/#\1"
    assert repository_rewrite("1.30.4") == pattern + "stable:/v1.30/#g"
    assert repository_rewrite("1.31.0-rc.1") == pattern + "prerelease:/v1.31/#g"
    with pytest.raises(ExecutorError, match="not a Kubernetes version"):
        repository_rewrite("latest")


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


def at(host: Path, version: str) -> None:
    """The fake host's kubeadm and kubelet at `version` (bare)."""
    (host / "kubeadm").write_text(f"{version}\n")
    (host / "kubelet").write_text(f"{version}\n")


async def test_a_patch_rollback_installs_the_older_kubeadm_and_applies_it_with_no_extra_flag(host: Path) -> None:
    at(host, "1.30.2")
    older = TargetVersions(kubernetes_version="v1.30.1")
    assert await kubeadm(host, etcd_snapshots=None).upgrade(older, KubeadmAction.APPLY, NodeRole.CONTROL_PLANE)
    assert calls(host) == [
        "kubelet --version",
        "apt-mark unhold kubeadm",
        "apt-get update",
        "apt-get install -y --allow-downgrades kubeadm=1.30.1-*",
        "apt-mark hold kubeadm",
        "kubeadm version -o short",
        "kubeadm upgrade apply -y v1.30.1",
        "apt-mark unhold kubelet kubectl",
        "apt-get update",
        "apt-get install -y --allow-downgrades kubelet=1.30.1-* kubectl=1.30.1-*",
        "apt-mark hold kubelet kubectl",
        "systemctl daemon-reload",
        "systemctl restart kubelet",
    ]


async def test_a_one_minor_rollback_tells_kubeadm_to_leave_etcd_alone(host: Path) -> None:
    at(host, "1.30.2")
    older = TargetVersions(kubernetes_version="v1.29.6")
    await kubeadm(host, etcd_snapshots=None).upgrade(older, KubeadmAction.APPLY, NodeRole.CONTROL_PLANE)
    assert "kubeadm upgrade apply -y --etcd-upgrade=false v1.29.6" in calls(host)
    assert (host / "kubernetes.list").read_text() == APT_REPO, "the repository moved back to v1.29"


async def test_a_rollback_of_two_minors_is_refused_before_the_host_is_touched(host: Path) -> None:
    at(host, "1.31.0")
    (host / "kubernetes.list").write_text(APT_REPO.replace("/v1.29/", "/v1.31/"))
    older = TargetVersions(kubernetes_version="v1.29.6")
    with pytest.raises(ExecutorError, match=r"from v1\.31\.0 to v1\.29\.6.*etcd snapshot.*docs/node-agent\.md"):
        await kubeadm(host).upgrade(older, KubeadmAction.APPLY, NodeRole.CONTROL_PLANE)
    assert calls(host) == ["kubelet --version"], "no snapshot, no package, no kubeadm run"
    assert (host / "kubernetes.list").read_text() == APT_REPO.replace("/v1.29/", "/v1.31/")
    assert not (host / "snapshots").exists()


# --- pre-releases (issue 17 item 4) ------------------------------------------------------------------------------

RC = TargetVersions(kubernetes_version="v1.30.0-rc.1")


async def test_an_rc_target_applies_with_the_rc_flag_and_pins_tilde_packages(host: Path) -> None:
    await kubeadm(host).upgrade(RC, KubeadmAction.APPLY, NodeRole.CONTROL_PLANE)
    log = calls(host)
    assert "kubeadm upgrade apply -y --allow-release-candidate-upgrades v1.30.0-rc.1" in log
    assert "apt-get install -y --allow-downgrades kubeadm=1.30.0~rc.1-*" in log
    assert "apt-get install -y --allow-downgrades kubelet=1.30.0~rc.1-* kubectl=1.30.0~rc.1-*" in log
    prerelease = APT_REPO.replace("/core:/stable:/v1.29/", "/core:/prerelease:/v1.30/")
    assert (host / "kubernetes.list").read_text() == prerelease, "pre-releases live in the prerelease channel"
    before = len(calls(host))
    assert await kubeadm(host).upgrade(RC, KubeadmAction.APPLY, NodeRole.CONTROL_PLANE) is False  # at the RC now
    assert calls(host)[before:] == ["kubelet --version"]


async def test_alpha_and_beta_targets_apply_with_the_experimental_flag(host: Path) -> None:
    beta = TargetVersions(kubernetes_version="v1.30.0-beta.0")
    await kubeadm(host).upgrade(beta, KubeadmAction.APPLY, NodeRole.CONTROL_PLANE)
    assert "kubeadm upgrade apply -y --allow-experimental-upgrades v1.30.0-beta.0" in calls(host)


async def test_an_rc_node_moves_to_ga_back_on_the_stable_channel(host: Path) -> None:
    (host / "kubelet").write_text("1.30.0~rc.1\n")
    (host / "kubernetes.list").write_text(RPM_REPO.replace("/core:/stable:/v1.29/", "/core:/prerelease:/v1.30/"))
    ga = TargetVersions(kubernetes_version="v1.30.0")
    assert await kubeadm(host, package_manager=PackageManager.DNF).upgrade(ga, None, NodeRole.WORKER) is True
    assert "dnf install -y kubeadm-1.30.0 --disableexcludes=kubernetes" in calls(host)
    assert "kubeadm upgrade node" in calls(host)  # `upgrade node` takes no unstable-version flag
    assert (host / "kubernetes.list").read_text() == RPM_REPO.replace("/v1.29/", "/v1.30/")
    assert await kubeadm(host, package_manager=PackageManager.DNF).upgrade(ga, None, NodeRole.WORKER) is False
    assert (host / "kubelet").read_text().strip() == "1.30.0"


def test_apply_flags_for_pre_releases_and_rollbacks() -> None:
    assert apply_flags("1.29.6", "1.30.0-rc.1") == ["--allow-release-candidate-upgrades"]
    assert apply_flags("1.29.6", "1.30.0-alpha.2") == ["--allow-experimental-upgrades"]
    assert apply_flags("1.30.0-rc.1", "1.30.0") == []  # RC to GA: a release, forward
    assert apply_flags("1.30.0", "1.30.0-rc.1") == ["--allow-release-candidate-upgrades"]  # back to the RC
    assert apply_flags("1.31.0-rc.0", "1.30.4") == ["--etcd-upgrade=false"]  # one minor down
    with pytest.raises(ExecutorError, match="at most 1 minor down"):
        apply_flags("1.32.0-rc.1", "1.30.0")
