"""The inventory the node-agent reports, read from real Node objects (and, on kubeadm clusters, the API server
static pods) of a real API server: what registration's node list and cluster version are made of."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from driver_support import add_nodes
from kube_support import ControlPlane

from flotilla_contracts.v1.common import NodeRole
from flotilla_node_agent.drivers.kubernetes import KubernetesDriver, api_client, list_node_facts
from flotilla_node_agent.run_kubernetes import node_lister

pytestmark = pytest.mark.kube


@pytest.fixture
async def api(kube_cluster: ControlPlane) -> AsyncIterator[Any]:
    client = await api_client(str(kube_cluster.kubeconfig))
    yield client
    await client.close()


async def kubectl(cp: ControlPlane, *args: str) -> str:
    return cp.kubectl(*args)


def api_server_pod(node: str, image: str) -> dict[str, Any]:
    """What kubeadm's static pod's mirror looks like to the API: kube-system, component label, bound to the node."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"kube-apiserver-{node}",
            "namespace": "kube-system",
            "labels": {"component": "kube-apiserver", "tier": "control-plane"},
            "annotations": {"kubernetes.io/config.mirror": "x"},
        },
        "spec": {
            "nodeName": node,
            "tolerations": [{"operator": "Exists"}],
            "containers": [{"name": "kube-apiserver", "image": image}],
        },
    }


async def test_inventory_facts_come_from_the_real_nodes(kube_cluster: ControlPlane, api: Any) -> None:
    [name] = await add_nodes(kube_cluster, "inventory", 1)
    await kubectl(kube_cluster, "cordon", name)
    facts = {f.node_name: f for f in await list_node_facts(api)}
    assert facts == {f.node_name: f for f in await node_lister(api)()}  # what the cluster agent reports
    control, worker, cordoned = facts["kwok-cp-0"], facts["kwok-worker-1"], facts[name]
    assert control.role is NodeRole.CONTROL_PLANE and worker.role is NodeRole.WORKER
    assert {f.kubelet_version for f in (control, worker, cordoned)} == {"v1.36.0"}
    assert worker.capacity.cpu_millis == 32000 and worker.capacity.memory_bytes == 256 << 30
    assert worker.capacity.pods == 110 and worker.allocatable == worker.capacity
    assert cordoned.unschedulable and not worker.unschedulable
    ready = [c for c in worker.conditions if c.type.value == "Ready"]
    assert ready and ready[0].status.value == "True"


async def test_a_control_plane_node_reports_the_version_of_its_api_server_pod(
    kube_cluster: ControlPlane, api: Any
) -> None:
    before = {f.node_name: f for f in await list_node_facts(api)}
    assert before["kwok-cp-0"].api_server_version is None  # no kubeadm static pod: unknown, not guessed
    kube_cluster.apply(api_server_pod("kwok-cp-0", "registry.k8s.io/kube-apiserver:v1.36.0"))
    facts = {f.node_name: f for f in await list_node_facts(api)}
    assert facts["kwok-cp-0"].api_server_version == "v1.36.0"
    assert facts["kwok-worker-1"].api_server_version is None
    assert (await KubernetesDriver(api, "kwok-cp-0").facts()).api_server_version == "v1.36.0"
    assert (await KubernetesDriver(api, "kwok-worker-1").facts()).api_server_version is None
