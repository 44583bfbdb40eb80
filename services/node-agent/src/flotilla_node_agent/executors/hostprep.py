"""What a control-plane upgrade needs on the host before kubeadm runs: the package repository of the target
minor, and an etcd snapshot to restore from.

The community repositories (pkgs.k8s.io) hold one minor each (`.../core:/stable:/v1.30/deb/`), so moving a node
from 1.29 to 1.30 means pointing the repository file at v1.30 first; `apt-get install kubeadm=1.30.4-*` fails
otherwise. Other layouts (a mirror that carries every minor, a distribution's own packages) set
`FLOTILLA_NODE_AGENT_PACKAGE_SOURCE=fixed` and the file is left alone. Pre-releases (alpha, beta, rc) live in a
channel of their own, `.../core:/prerelease:/v1.38/deb/` (the OBS project isv:kubernetes:core:prerelease:v1.38),
so a pre-release target moves the file to that channel and a release target moves it back to `stable`.

Before the first control-plane upgrade of a cluster (`kubeadm upgrade apply`) the agent saves an etcd snapshot
(kubeadm's upgrade guide asks for a backup) into a private folder on that node, keeping the newest few.
"""

from __future__ import annotations

import enum
import re
import shlex
from dataclasses import dataclass
from datetime import UTC, datetime

from flotilla_node_agent.executors.base import CommandRunner, ExecutorError

# The channel and minor in a pkgs.k8s.io URL: https://pkgs.k8s.io/core:/stable:/v1.30/deb/ (and /rpm/), or
# https://pkgs.k8s.io/core:/prerelease:/v1.38/deb/ for alpha, beta and rc packages.
PKGS_K8S_IO = "pkgs.k8s.io/core:/"
_MINOR_RE = re.compile(r"^(\d+)\.(\d+)\.\d+(-)?")


class PackageSource(enum.StrEnum):
    PKGS_K8S_IO = "pkgs.k8s.io"  # one repository per minor: switched to the target's minor
    FIXED = "fixed"  # the configured repository carries every version: left alone


def minor_of(version: str) -> str:
    """`1.30.4` -> `v1.30` (the form pkgs.k8s.io paths use)."""
    match = _MINOR_RE.match(version)
    if match is None:
        raise ExecutorError(f"{version!r} is not a Kubernetes version (major.minor.patch)")
    return f"v{match.group(1)}.{match.group(2)}"


def channel_of(version: str) -> str:
    """`1.38.0-rc.1` -> `prerelease`, `1.37.2` -> `stable` (the pkgs.k8s.io channel that holds its packages)."""
    match = _MINOR_RE.match(version)
    if match is None:
        raise ExecutorError(f"{version!r} is not a Kubernetes version (major.minor.patch)")
    return "prerelease" if match.group(3) else "stable"


def repository_rewrite(version: str) -> str:
    """The sed expression that points every pkgs.k8s.io path in a repository file at `version`'s channel and
    minor."""
    where = f"{channel_of(version)}:/{minor_of(version)}/"
    return rf"s#({re.escape(PKGS_K8S_IO)})(stable|prerelease):/v[0-9]+\.[0-9]+/#\1{where}#g"


async def switch_repository(runner: CommandRunner, source: PackageSource, repo_file: str, version: str) -> None:
    """Point `repo_file` at `version`'s minor (pkgs.k8s.io); a file without such a repository is an error that
    says which setting to change, never a silent install from the old minor."""
    if source is PackageSource.FIXED:
        return
    try:
        await runner.run(["grep", "-q", "-F", PKGS_K8S_IO, repo_file])
    except ExecutorError:
        raise ExecutorError(
            f"{repo_file} names no {PKGS_K8S_IO} repository, so the agent cannot move it to {minor_of(version)}: "
            "point FLOTILLA_NODE_AGENT_PACKAGE_REPO_FILE at the Kubernetes repository file, or set "
            "FLOTILLA_NODE_AGENT_PACKAGE_SOURCE=fixed when your repository carries every version"
        ) from None
    await runner.run(["sed", "-i", "-E", repository_rewrite(version), repo_file])


@dataclass(frozen=True)
class EtcdSnapshots:
    """Where snapshots go on a control-plane node, how many are kept, and how etcdctl reaches the local member
    (kubeadm's stacked etcd: its certificates under /etc/kubernetes/pki/etcd)."""

    folder: str = "/var/lib/flotilla/etcd-snapshots"
    kept: int = 3
    etcdctl: tuple[str, ...] = (
        "etcdctl",
        "--endpoints=https://127.0.0.1:2379",
        "--cacert=/etc/kubernetes/pki/etcd/ca.crt",
        "--cert=/etc/kubernetes/pki/etcd/server.crt",
        "--key=/etc/kubernetes/pki/etcd/server.key",
    )

    def path_for(self, version: str, now: datetime) -> str:
        return f"{self.folder}/etcd-before-v{version}-{now.strftime('%Y%m%dT%H%M%SZ')}.db"

    def prune_script(self) -> str:
        """Keep the newest `kept` snapshots (names sort by time: the timestamp is in the name)."""
        pattern = shlex.quote(self.folder) + "/etcd-before-*.db"
        return f"ls -1 {pattern} 2>/dev/null | sort | head -n -{self.kept} | xargs -r rm -f --"

    async def save(self, runner: CommandRunner, version: str, now: datetime | None = None) -> str:
        """Save a snapshot before `kubeadm upgrade apply` to `version`; returns its path on the node."""
        path = self.path_for(version, now or datetime.now(UTC))
        await runner.run(["mkdir", "-p", "-m", "0700", self.folder])
        try:
            await runner.run([*self.etcdctl, "snapshot", "save", path], env={"ETCDCTL_API": "3"})
        except ExecutorError as exc:
            raise ExecutorError(
                f"no etcd snapshot before the control-plane upgrade, so it does not start: {exc}. Install etcdctl "
                "on control-plane nodes, or set FLOTILLA_NODE_AGENT_ETCD_SNAPSHOT_DIR= (empty) where etcd is "
                "external and backed up elsewhere"
            ) from None
        await runner.run(["sh", "-c", self.prune_script()])
        return path
