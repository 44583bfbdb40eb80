"""A control plane as a member cluster of a local fleet: a node-agent process per kwok node, with the
Kubernetes driver and the script executor, joining with a token and logging in as its cluster.

The agents authenticate to the API server as the node-agent ServiceAccount with the RBAC given (the shipped
`deploy/services/node-agent`, rendered) and a real TokenRequest token; without RBAC given they are the admin.
The upgrade script plays the kubelet's part a kwok node lacks: after "installing" it writes the new kubelet
version into the Node's status, as a restarted kubelet would, with the admin's credentials (a kubelet writes
its own Node, not the node-agent).
"""

from __future__ import annotations

import json
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flotilla_client import localfleet
from flotilla_client.kubeworld.controlplane import ControlPlane
from flotilla_client.kubeworld.processes import HarnessError
from flotilla_contracts.subjects import Service

NAMESPACE = "flotilla-system"  # the agents' namespace (Lease, cluster ConfigMap and Secret) when they are admin
SERVICE_ACCOUNT_KIND = "ServiceAccount"


@dataclass
class Member:
    """One member cluster: its control plane, the agents' kubeconfig and their processes (one per node)."""

    name: str
    cp: ControlPlane
    kubeconfig: Path
    identity: str
    namespace: str = NAMESPACE
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)


def upgrade_script(cp: ControlPlane) -> Path:
    """The script executor's command for kwok nodes: `<script> <k8s> <kubeadm> <kubelet> <kubectl> <verb> <role>`."""
    path = cp.root / "kwok-kubelet-upgrade.sh"
    kubectl = shlex.join([str(cp.bins / "kubectl"), "--kubeconfig", str(cp.kubeconfig)])
    path.write_text(
        "#!/bin/sh\n"
        "# A kwok node has no kubelet: write the version a restarted kubelet would report into the Node's status.\n"
        "set -eu\n"
        'node="${FLOTILLA_NODE_AGENT_NODE_NAME:?the node-agent sets FLOTILLA_NODE_AGENT_NODE_NAME}"\n'
        'patch="{\\"status\\":{\\"nodeInfo\\":{\\"kubeletVersion\\":\\"v$3\\",\\"kubeProxyVersion\\":\\"v$3\\"}}}"\n'
        f'exec {kubectl} patch node "$node" --subresource=status --type=merge -p "$patch"\n'
    )
    path.chmod(0o700)
    return path


def _service_account(objects: list[dict[str, Any]]) -> tuple[str, str]:
    """(namespace, name) of the one ServiceAccount in the agent's manifests."""
    found = [o["metadata"] for o in objects if o.get("kind") == SERVICE_ACCOUNT_KIND]
    if len(found) != 1:
        raise HarnessError(f"the agent manifests must hold exactly one ServiceAccount, not {len(found)}")
    return str(found[0].get("namespace") or "default"), str(found[0]["name"])


def prepare(cp: ControlPlane, name: str, agent_objects: list[dict[str, Any]] | None) -> Member:
    """The agents' namespace and identity on `cp`: the ServiceAccount and RBAC of `agent_objects` (applied
    as given, its namespace first), or the admin when None."""
    if not agent_objects:
        cp.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
        return Member(name, cp, cp.kubeconfig, "admin")
    namespace, account = _service_account(agent_objects)
    cp.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    cp.apply(*[o for o in agent_objects if o.get("kind") != "Namespace"])
    kubeconfig = cp.service_account_kubeconfig(namespace, account, cp.root / "node-agent.kubeconfig")
    return Member(name, cp, kubeconfig, f"system:serviceaccount:{namespace}:{account}", namespace)


def start_agents(member: Member, home: Path, nats_url: str, join_token: str, *, verify_timeout_s: float = 120) -> None:
    """A node-agent process per node of the member's control plane, state under `home/<node>`."""
    script = upgrade_script(member.cp)
    for node in member.cp.nodes:
        settings = {
            "driver": "kubernetes",
            "kubeconfig": str(member.kubeconfig),
            "namespace": member.namespace,
            "node_name": node,
            "cluster_name": member.name,
            "join_token": join_token,
            "bus_login": "cluster",
            "executor": "script",
            "upgrade_script": str(script),
            "verify_timeout_s": str(verify_timeout_s),
        }
        _entry, process = localfleet.start_service(Service.NODE_AGENT, home / node, nats_url, settings)
        member.agents[node] = process


def stop_agents(member: Member, timeout_s: float = 20.0) -> None:
    for process in member.agents.values():
        if process.poll() is None:
            process.terminate()
    for process in member.agents.values():
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def load_objects(path: Path) -> list[dict[str, Any]]:
    """Kubernetes objects from a JSON List or a YAML stream (as `kubectl kustomize` prints)."""
    import yaml

    text = path.read_text()
    if text.lstrip().startswith("{"):
        data = json.loads(text)
        return list(data.get("items", [data]))
    return [doc for doc in yaml.safe_load_all(text) if isinstance(doc, dict)]
