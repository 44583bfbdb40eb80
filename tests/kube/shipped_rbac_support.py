"""What the shipped-RBAC tests share (test_shipped_rbac_node_driver.py, test_shipped_rbac_cluster_agent.py): a
control plane with deploy/base and deploy/services/node-agent applied as rendered, a real token of the `node-agent`
ServiceAccount, and the node-agent's own Kubernetes client and applier acting with it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kube_support import ControlPlane, control_plane, wait_until
from rbac_support import as_list, privileged_allowed, render, service_account_token, token_kubeconfig

from flotilla_contracts.v1.scheduler_events import ApplyResult
from flotilla_node_agent.apply_backends import KubernetesApplyBackend
from flotilla_node_agent.drivers.kubernetes import api_client

NS = "flotilla"  # where deploy/ puts the node-agent (its Lease, ConfigMap and Secret live there too)
SA = "node-agent"
AS_SA = f"system:serviceaccount:{NS}:{SA}"
APPLIER = "flotilla-workload-applier"


@dataclass
class Shipped:
    cp: ControlPlane
    token: str
    kubeconfig: Path


def applier_rules(cp: ControlPlane) -> set[tuple[str, str]]:
    role = cp.get_json("clusterrole", APPLIER)
    return {(g, r) for rule in role.get("rules") or [] for g in rule["apiGroups"] for r in rule["resources"]}


@contextlib.contextmanager
def shipped_control_plane(folder: Path) -> Iterator[Shipped]:
    """A control plane with deploy/base and deploy/services/node-agent applied as rendered, and the ServiceAccount's
    token with a kubeconfig for it written into `folder`."""
    with control_plane(workers=2, kubelet_version="v1.36.0") as cp:
        objects = render("base") + render("services/node-agent")
        assert privileged_allowed(cp), "the node-agent DaemonSet is privileged: run with --allow-privileged=true"
        shipped = as_list(objects)
        cp.kubectl("apply", "--server-side", "-f", "-", stdin=shipped)
        # The aggregated role is filled in by the controller-manager's clusterrole-aggregation controller.
        wait_until(
            "flotilla-workload-applier aggregated",
            lambda: ("apps", "deployments") in applier_rules(cp),
            cp.components,
            60,
        )
        # Applying again (an upgrade of Flotilla) does not fight the controller over the aggregated rules.
        cp.kubectl("apply", "--server-side", "-f", "-", stdin=shipped)
        token = service_account_token(cp, NS, SA)
        path = token_kubeconfig(folder / "node-agent.kubeconfig", cp.server, token)
        yield Shipped(cp, token, path)


@contextlib.asynccontextmanager
async def node_agent_api(shipped: Shipped) -> AsyncIterator[Any]:
    """A kubernetes-asyncio ApiClient loaded the way the node-agent loads one, as the ServiceAccount."""
    api = await api_client(str(shipped.kubeconfig))
    try:
        yield api
    finally:
        await api.close()


async def apply(backend: KubernetesApplyBackend, manifest: dict[str, Any]) -> ApplyResult:
    """What the applier does per object: resolve its scope by discovery, then server-side apply it."""
    ref = await backend.resolve(manifest)
    return (await backend.apply(ref, manifest, "flotilla")).result


async def delete(backend: KubernetesApplyBackend, manifest: dict[str, Any]) -> ApplyResult:
    """What prune does per object."""
    return (await backend.delete(await backend.resolve(manifest))).result
