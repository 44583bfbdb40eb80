"""The documented kubeadm upgrade procedure for one node, by role, with pinned host packages.

First control-plane node: an etcd snapshot, the package repository moved to the target minor, install
kubeadm, `kubeadm upgrade apply -y vX`; other control-plane nodes and workers: the repository, kubeadm,
`kubeadm upgrade node`. Then kubelet and kubectl, and a kubelet restart. The drain around it is the agent's
own step. (kubernetes.io: "Upgrading kubeadm clusters"; hostprep.py for the repository and the snapshot.)

A rollback is the same procedure to the older version, within what kubeadm's version policy allows
(cmd/kubeadm/app/phases/upgrade/policy.go, EnforceVersionPolicies, v1.37), judged from the node's kubelet:
- a patch down: kubeadm is installed at the target first (apt `--allow-downgrades`), then `upgrade apply` needs
  nothing more (no policy error once kubeadm is at the target version);
- one minor down: the same, with `--etcd-upgrade=false`: kubeadm never moves etcd down (it would report the older
  etcd as a skipped, non-fatal step), so etcd stays at the newer version and its data is not rolled back;
- more than one minor down: kubeadm refuses (a Mandatory error, `--force` does not lift it), so the step is
  refused before anything on the host moves, pointing at restoring the etcd snapshot (docs/node-agent.md).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

from flotilla_contracts.v1.agent import KubeadmAction, TargetVersions
from flotilla_contracts.v1.common import NodeRole
from flotilla_node_agent.executors.base import CommandRunner, ExecutorError, kubelet_version, plain, versions_of
from flotilla_node_agent.executors.hostprep import EtcdSnapshots, PackageSource, switch_repository


class PackageManager(enum.StrEnum):
    APT = "apt"
    DNF = "dnf"
    YUM = "yum"


REPO_FILES: dict[PackageManager, str] = {  # where pkgs.k8s.io's install guide puts the repository
    PackageManager.APT: "/etc/apt/sources.list.d/kubernetes.list",
    PackageManager.DNF: "/etc/yum.repos.d/kubernetes.repo",
    PackageManager.YUM: "/etc/yum.repos.d/kubernetes.repo",
}


_VERSION_RE = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)")
MAX_MINORS_DOWN = 1  # kubeadm's MaximumAllowedMinorVersionDowngradeSkew


def _numbers(version: str) -> tuple[int, int, int] | None:
    match = _VERSION_RE.match(version)
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def apply_flags(current: str | None, target: str) -> list[str]:
    """The flags `kubeadm upgrade apply` needs to take a control plane from `current` to `target` (bare versions);
    raises ExecutorError, before anything moves, for a downgrade kubeadm refuses. `current` None: not known."""
    now, want = _numbers(current or ""), _numbers(target)
    if now is None or want is None or want >= now:
        return []
    if want[0] != now[0] or want[1] < now[1] - MAX_MINORS_DOWN:
        raise ExecutorError(
            f"kubeadm cannot take the control plane down from v{current} to v{target}: its version policy allows "
            f"at most {MAX_MINORS_DOWN} minor down and --force does not lift that; nothing was changed on the host. "
            "Restore the etcd snapshot taken before the upgrade and reinstall the old packages instead "
            "(docs/node-agent.md, 'Restore')"
        )
    if want[1] < now[1]:
        return ["--etcd-upgrade=false"]  # kubeadm never moves etcd down: keep it, and say so in the command
    return []


@dataclass
class KubeadmExecutor:
    runner: CommandRunner
    package_manager: PackageManager = PackageManager.APT
    package_source: PackageSource = PackageSource.PKGS_K8S_IO
    repo_file: str = ""  # empty: REPO_FILES[package_manager]
    etcd_snapshots: EtcdSnapshots | None = field(default_factory=EtcdSnapshots)  # None: external etcd

    async def upgrade(self, target: TargetVersions, action: KubeadmAction | None, role: NodeRole) -> bool:
        versions = versions_of(target)
        current = await kubelet_version(self.runner)
        if current == versions["kubelet"]:
            return False  # kubelet goes last, so the whole procedure already took effect
        if action is None:
            action = KubeadmAction.NODE  # `apply` only when the orchestrator names the first control plane
        if action is KubeadmAction.APPLY and role is not NodeRole.CONTROL_PLANE:
            raise ExecutorError("`kubeadm upgrade apply` is for the first control-plane node, not a worker")
        flags = apply_flags(current, versions["kubernetes"]) if action is KubeadmAction.APPLY else []
        if action is KubeadmAction.APPLY and self.etcd_snapshots is not None:
            await self.etcd_snapshots.save(self.runner, versions["kubernetes"])
        repo_file = self.repo_file or REPO_FILES[self.package_manager]
        await switch_repository(self.runner, self.package_source, repo_file, versions["kubeadm"])
        await self._install(["kubeadm"], versions)
        seen = plain((await self.runner.run(["kubeadm", "version", "-o", "short"])).strip())
        if seen != versions["kubeadm"]:
            raise ExecutorError(f"kubeadm reports {seen or 'nothing'} after installing {versions['kubeadm']}")
        if action is KubeadmAction.APPLY:
            await self.runner.run(["kubeadm", "upgrade", "apply", "-y", *flags, f"v{versions['kubernetes']}"])
        else:
            await self.runner.run(["kubeadm", "upgrade", "node"])
        await self._install(["kubelet", "kubectl"], versions)
        await self.runner.run(["systemctl", "daemon-reload"])
        await self.runner.run(["systemctl", "restart", "kubelet"])
        return True

    async def _install(self, packages: list[str], versions: dict[str, str]) -> None:
        """Install exact versions and hold them, so an unattended upgrade never moves them."""
        if self.package_manager is PackageManager.APT:
            await self.runner.run(["apt-mark", "unhold", *packages])
            await self.runner.run(["apt-get", "update"])
            pinned = [f"{name}={versions[name]}-*" for name in packages]
            await self.runner.run(["apt-get", "install", "-y", "--allow-downgrades", *pinned])
            await self.runner.run(["apt-mark", "hold", *packages])
        else:
            pinned = [f"{name}-{versions[name]}" for name in packages]
            tool = self.package_manager.value
            await self.runner.run([tool, "install", "-y", *pinned, "--disableexcludes=kubernetes"])
