"""The documented kubeadm upgrade procedure for one node, by role, with pinned host packages.

First control-plane node: an etcd snapshot, the package repository moved to the target minor, install
kubeadm, `kubeadm upgrade apply -y vX`; other control-plane nodes and workers: the repository, kubeadm,
`kubeadm upgrade node`. Then kubelet and kubectl, and a kubelet restart. The drain around it is the agent's
own step. (kubernetes.io: "Upgrading kubeadm clusters"; hostprep.py for the repository and the snapshot.)

A rollback is the same procedure to the older version: kubeadm's version policy lets `upgrade apply` go down a
patch or one minor once kubeadm itself is at the target (installed with --allow-downgrades); etcd is not
moved down by kubeadm, so a rollback across a minor should restore the snapshot instead (docs/node-agent.md).
"""

from __future__ import annotations

import enum
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


@dataclass
class KubeadmExecutor:
    runner: CommandRunner
    package_manager: PackageManager = PackageManager.APT
    package_source: PackageSource = PackageSource.PKGS_K8S_IO
    repo_file: str = ""  # empty: REPO_FILES[package_manager]
    etcd_snapshots: EtcdSnapshots | None = field(default_factory=EtcdSnapshots)  # None: external etcd

    async def upgrade(self, target: TargetVersions, action: KubeadmAction | None, role: NodeRole) -> bool:
        versions = versions_of(target)
        if await kubelet_version(self.runner) == versions["kubelet"]:
            return False  # kubelet goes last, so the whole procedure already took effect
        if action is None:
            action = KubeadmAction.NODE  # `apply` only when the orchestrator names the first control plane
        if action is KubeadmAction.APPLY and role is not NodeRole.CONTROL_PLANE:
            raise ExecutorError("`kubeadm upgrade apply` is for the first control-plane node, not a worker")
        if action is KubeadmAction.APPLY and self.etcd_snapshots is not None:
            await self.etcd_snapshots.save(self.runner, versions["kubernetes"])
        repo_file = self.repo_file or REPO_FILES[self.package_manager]
        await switch_repository(self.runner, self.package_source, repo_file, versions["kubeadm"])
        await self._install(["kubeadm"], versions)
        seen = plain((await self.runner.run(["kubeadm", "version", "-o", "short"])).strip())
        if seen != versions["kubeadm"]:
            raise ExecutorError(f"kubeadm reports {seen or 'nothing'} after installing {versions['kubeadm']}")
        if action is KubeadmAction.APPLY:
            await self.runner.run(["kubeadm", "upgrade", "apply", "-y", f"v{versions['kubernetes']}"])
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
