"""The harness itself, against the real binaries: nodes Ready with their kubelet version, ReplicaSet pods
scheduled and Running on kwok nodes, a PodDisruptionBudget that makes the eviction API answer 429, and nothing
left running after teardown."""

import time
from typing import Any

import pytest
from kube_support import CONTROL_PLANE_ROLE, ControlPlane, control_plane, wait_until

pytestmark = pytest.mark.kube

NS = "harness"
LABELS = {"app": "web"}


def deployment() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": NS},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": LABELS},
            "template": {
                "metadata": {"labels": LABELS},
                "spec": {"containers": [{"name": "web", "image": "example.invalid/web:1"}]},
            },
        },
    }


def pdb() -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": "web", "namespace": NS},
        "spec": {"minAvailable": 2, "selector": {"matchLabels": LABELS}},
    }


def running_pods(cp: ControlPlane) -> list[dict[str, Any]]:
    pods = cp.get_json("pods", "-n", NS, "-l", "app=web")["items"]
    return [p for p in pods if p["status"].get("phase") == "Running" and p["spec"].get("nodeName")]


def pdb_settled(cp: ControlPlane) -> bool:
    status: dict[str, Any] = cp.get_json("pdb", "web", "-n", NS).get("status", {})
    return bool(status.get("currentHealthy") == 2 and status.get("disruptionsAllowed") == 0)


def test_control_plane_runs_pods_on_kwok_nodes_and_pdb_blocks_eviction() -> None:
    started = time.monotonic()
    with control_plane(workers=2, kubelet_version="v1.36.0") as cp:
        startup_s = time.monotonic() - started
        nodes = {n["metadata"]["name"]: n for n in cp.get_json("nodes")["items"]}
        assert sorted(nodes) == ["kwok-cp-0", "kwok-worker-1", "kwok-worker-2"]
        for node in nodes.values():
            assert node["status"]["nodeInfo"]["kubeletVersion"] == "v1.36.0"
            ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
            assert ready and ready[0]["status"] == "True"
        assert CONTROL_PLANE_ROLE in nodes["kwok-cp-0"]["metadata"]["labels"]

        cp.kubectl("create", "namespace", NS)
        cp.apply(deployment(), pdb())
        wait_until("2 web pods Running", lambda: len(running_pods(cp)) == 2, cp.components, 90)
        pods = running_pods(cp)
        # Owned by the ReplicaSet the controller-manager made; placed by the scheduler off the tainted node.
        for pod in pods:
            assert pod["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
            assert pod["spec"]["nodeName"] in {"kwok-worker-1", "kwok-worker-2"}
        wait_until("PDB status computed", lambda: pdb_settled(cp), cp.components, 90)

        victim = pods[0]["metadata"]["name"]
        eviction = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": victim, "namespace": NS}}
        status, body = cp.request("POST", f"/api/v1/namespaces/{NS}/pods/{victim}/eviction", eviction)
        assert status == 429, body
        assert "disruption budget" in body["message"]
        assert victim in {p["metadata"]["name"] for p in running_pods(cp)}  # nothing deleted
        pgids = cp.pgids
        print(f"kube harness: startup {startup_s:.1f} s, timings {cp.timings}")
    assert cp.alive() == []
    assert len(pgids) == 5
    print(f"kube harness: teardown {cp.timings['teardown_s']:.1f} s, total {time.monotonic() - started:.1f} s")


def test_fixture_gives_a_ready_cluster(kube_cluster: ControlPlane) -> None:
    status, body = kube_cluster.request("GET", "/readyz")
    assert status == 200, body
    assert kube_cluster.alive() == ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"]
