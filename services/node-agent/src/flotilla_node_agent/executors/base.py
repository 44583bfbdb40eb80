"""Running host commands through a configurable prefix (e.g. nsenter), and the executor interface."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from flotilla_contracts.v1.agent import KubeadmAction, TargetVersions
from flotilla_contracts.v1.common import NodeRole
from flotilla_kube.versions import KubeVersion, parse_version

# For the DaemonSet: run on the host, in its namespaces, from a privileged pod with hostPID.
NSENTER_PREFIX = "nsenter --target 1 --mount --uts --ipc --net --pid --"
_KUBELET_VERSION_RE = re.compile(r"v?(\d+\.\d+\.\d+\S*)")


class ExecutorError(Exception):
    """A host command failed or timed out; the message names the command and its last output."""


@dataclass
class CommandRunner:
    """Runs argv lists on the host: `prefix + argv`, with a timeout, raising ExecutorError on failure."""

    prefix: Sequence[str] = ()
    timeout_s: float = 900.0
    env: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_setting(cls, prefix: str, timeout_s: float = 900.0) -> CommandRunner:
        return cls(shlex.split(prefix), timeout_s)

    async def run(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> str:
        full = [*self.prefix, *argv]
        try:
            proc = await asyncio.create_subprocess_exec(
                *full,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={**os.environ, **self.env, **(env or {})},
                start_new_session=True,  # so a timeout can end the command's children too
            )
        except OSError as exc:
            raise ExecutorError(f"cannot run {shlex.join(full)}: {exc}") from exc
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            raise ExecutorError(f"{shlex.join(full)} did not finish within {self.timeout_s:.0f}s") from None
        if proc.returncode != 0:
            tail = (err or out).decode(errors="replace").strip()[-500:]
            raise ExecutorError(f"{shlex.join(full)} exited with {proc.returncode}: {tail}")
        return out.decode(errors="replace")


def plain(version: str) -> str:
    """`v1.30.2` -> `1.30.2` (package managers and kubeadm's config want it bare)."""
    return version[1:] if version.startswith("v") else version


def parsed_version(version: str | None) -> KubeVersion | None:
    """The version with semver precedence, or None when missing or malformed."""
    try:
        return parse_version(version) if version else None
    except ValueError:
        return None


def same_version(a: str | None, b: str) -> bool:
    """Equal by semver precedence (`1.30.4+k3s1` is `1.30.4`, `1.31.0-rc.1` is not `1.31.0`); text otherwise."""
    left, right = parsed_version(a), parsed_version(b)
    return left == right if left is not None and right is not None else a == b


def versions_of(target: TargetVersions) -> dict[str, str]:
    """The four versions a step installs, each defaulting to the Kubernetes version."""
    k8s = plain(target.kubernetes_version)
    return {
        "kubernetes": k8s,
        "kubeadm": plain(target.kubeadm_version or k8s),
        "kubelet": plain(target.kubelet_version or k8s),
        "kubectl": plain(target.kubectl_version or k8s),
    }


async def kubelet_version(runner: CommandRunner) -> str | None:
    """The kubelet installed on the host (`kubelet --version`), or None when it cannot be read."""
    try:
        out = await runner.run(["kubelet", "--version"])
    except ExecutorError:
        return None
    match = _KUBELET_VERSION_RE.search(out)
    return match.group(1) if match else None


class Executor(Protocol):
    """Performs the upgrade step on the host; repeating it after it took effect changes nothing."""

    async def upgrade(self, target: TargetVersions, action: KubeadmAction | None, role: NodeRole) -> bool:
        """Upgrade; False when the host was already at the target (nothing was run)."""
        ...
