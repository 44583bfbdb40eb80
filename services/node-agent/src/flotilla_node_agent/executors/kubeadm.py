"""The documented kubeadm upgrade procedure for one node, by role, with pinned host packages.

First control-plane node: install kubeadm, `kubeadm upgrade apply -y vX`; other control-plane nodes and
workers: `kubeadm upgrade node`. Then kubelet and kubectl, and a kubelet restart. The drain around it is
the agent's own step. (kubernetes.io: "Upgrading kubeadm clusters".)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from flotilla_contracts.v1.agent import KubeadmAction, TargetVersions
from flotilla_contracts.v1.common import NodeRole
from flotilla_node_agent.executors.base import CommandRunner, ExecutorError, kubelet_version, plain, versions_of


class PackageManager(enum.StrEnum):
    APT = "apt"
    DNF = "dnf"
    YUM = "yum"


@dataclass
class KubeadmExecutor:
    runner: CommandRunner
    package_manager: PackageManager = PackageManager.APT

    async def upgrade(self, target: TargetVersions, action: KubeadmAction | None, role: NodeRole) -> bool:
        versions = versions_of(target)
        if await kubelet_version(self.runner) == versions["kubelet"]:
            return False  # kubelet goes last, so the whole procedure already took effect
        if action is None:
            action = KubeadmAction.NODE  # `apply` only when the orchestrator names the first control plane
        if action is KubeadmAction.APPLY and role is not NodeRole.CONTROL_PLANE:
            raise ExecutorError("`kubeadm upgrade apply` is for the first control-plane node, not a worker")
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
