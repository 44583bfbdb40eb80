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

A pre-release target (the orchestrator only sends one when the rollout said `allow_pre_release`): kubeadm refuses
an "unstable version" unless told (policy.go detectUnstableVersionError, a Skippable error): `upgrade apply` gets
`--allow-release-candidate-upgrades` for an rc, `--allow-experimental-upgrades` for alpha and beta (kubeadm's
own `upgrade plan` prints the same choice). Its packages are named the way kubernetes/release builds them
(pkg/obs/specs RPMVersion: every `-` of the version becomes `~`, for deb and rpm alike, so they sort below the
release): `kubeadm=1.38.0~rc.1-*` (apt), `kubeadm-1.38.0~rc.1` (dnf/yum), from the prerelease channel
(hostprep.py).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from flotilla_contracts.v1.agent import KubeadmAction, TargetVersions
from flotilla_contracts.v1.common import NodeRole
from flotilla_node_agent.executors.base import (
    CommandRunner,
    ExecutorError,
    kubelet_version,
    parsed_version,
    plain,
    same_version,
    versions_of,
)
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


MAX_MINORS_DOWN = 1  # kubeadm's MaximumAllowedMinorVersionDowngradeSkew


def package_version(version: str) -> str:
    """The package version pkgs.k8s.io gives a Kubernetes version: `1.38.0-rc.1` -> `1.38.0~rc.1`."""
    return version.replace("-", "~")


def unstable_flags(target: str) -> list[str]:
    """The flag kubeadm needs to apply a pre-release (detectUnstableVersionError); none for a release."""
    want = parsed_version(target)
    if want is None or not want.is_pre_release:
        return []
    return ["--allow-release-candidate-upgrades"] if want.is_release_candidate else ["--allow-experimental-upgrades"]


def apply_flags(current: str | None, target: str) -> list[str]:
    """The flags `kubeadm upgrade apply` needs to take a control plane from `current` to `target` (bare versions);
    raises ExecutorError, before anything moves, for a downgrade kubeadm refuses. `current` None: not known."""
    now, want = parsed_version(current), parsed_version(target)
    flags = unstable_flags(target)
    if now is None or want is None or want >= now:
        return flags
    if want.major != now.major or want.minor < now.minor - MAX_MINORS_DOWN:
        raise ExecutorError(
            f"kubeadm cannot take the control plane down from v{current} to v{target}: its version policy allows "
            f"at most {MAX_MINORS_DOWN} minor down and --force does not lift that; nothing was changed on the host. "
            "Restore the etcd snapshot taken before the upgrade and reinstall the old packages instead "
            "(docs/node-agent.md, 'Restore')"
        )
    if want.minor < now.minor:
        return ["--etcd-upgrade=false", *flags]  # kubeadm never moves etcd down: keep it, and say so in the command
    return flags


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
        if same_version(current, versions["kubelet"]):
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
        if not same_version(seen, versions["kubeadm"]):
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
            pinned = [f"{name}={package_version(versions[name])}-*" for name in packages]
            await self.runner.run(["apt-get", "install", "-y", "--allow-downgrades", *pinned])
            await self.runner.run(["apt-mark", "hold", *packages])
        else:
            pinned = [f"{name}-{package_version(versions[name])}" for name in packages]
            tool = self.package_manager.value
            await self.runner.run([tool, "install", "-y", *pinned, "--disableexcludes=kubernetes"])
