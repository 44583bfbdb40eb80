"""The `script` executor: a user's command performs the upgrade, given the versions as arguments.

Called as `<script> <kubernetes> <kubeadm> <kubelet> <kubectl> <apply|node> <role>`, with the same values
in FLOTILLA_* environment variables; a non-zero exit fails the step with the script's last output.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from flotilla_contracts.v1.agent import KubeadmAction, TargetVersions
from flotilla_contracts.v1.common import NodeRole
from flotilla_node_agent.executors.base import CommandRunner, ExecutorError, kubelet_version, same_version, versions_of


@dataclass
class ScriptExecutor:
    runner: CommandRunner
    command: str
    skip_when_at_target: bool = True

    async def upgrade(self, target: TargetVersions, action: KubeadmAction | None, role: NodeRole) -> bool:
        if not self.command.strip():
            raise ExecutorError("the script executor needs FLOTILLA_NODE_AGENT_UPGRADE_SCRIPT")
        versions = versions_of(target)
        if self.skip_when_at_target and same_version(await kubelet_version(self.runner), versions["kubelet"]):
            return False
        verb = (action or KubeadmAction.NODE).value
        argv = [*shlex.split(self.command), *(versions[k] for k in ("kubernetes", "kubeadm", "kubelet", "kubectl"))]
        env = {f"FLOTILLA_{key.upper()}_VERSION": value for key, value in versions.items()}
        env |= {"FLOTILLA_KUBEADM_ACTION": verb, "FLOTILLA_NODE_ROLE": role.value}
        await self.runner.run([*argv, verb, role.value], env=env)
        return True
