"""The Kubernetes driver against kmock emulating the API: cordon patch, evictions (200, 429, always 429),
DaemonSet and mirror pods skipped, unmanaged pods refused, verify at the target version.

kmock has no eviction endpoint of its own: a reaction below answers it (and deletes the pod on 200). It
ignores field selectors, so the driver filters pods by node itself (a pod of another node is listed here
on purpose). It merges patches plainly: a removed annotation reads back as null.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

pytest.importorskip("kubernetes_asyncio", reason="kubernetes-asyncio is not installed (node-agent dependency)")

import kmock as km
from kubernetes_asyncio import client

from flotilla_contracts.v1.agent import DrainOptions, StepProgress, TargetVersions
from flotilla_node_agent.agent_metrics import AgentMetrics
from flotilla_node_agent.drivers.base import CORDONED_BY_ANNOTATION, StepFailed
from flotilla_node_agent.drivers.kubernetes import KubernetesDriver

EVICTION = re.compile(r"^/api/v1/namespaces/[^/]+/pods/[^/]+/eviction$")


def node(name: str = "n1", version: str = "v1.29.6", ready: str = "True", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"node-role.kubernetes.io/control-plane": ""}, "annotations": {}},
        "spec": spec,
        "status": {
            "conditions": [{"type": "Ready", "status": ready}],
            "nodeInfo": {
                "kubeletVersion": version,
                "kubeProxyVersion": version,
                "osImage": "Debian",
                "architecture": "amd64",
                "bootID": "b",
                "containerRuntimeVersion": "containerd://1.7",
                "kernelVersion": "6.1",
                "machineID": "m",
                "operatingSystem": "linux",
                "systemUUID": "s",
            },
            "capacity": {"cpu": "4", "memory": "16Gi", "pods": "110"},
        },
    }


def pod(name: str, owner: str = "ReplicaSet", node_name: str = "n1", **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "default", "uid": f"uid-{name}"}
    if owner:
        meta["ownerReferences"] = [
            {"apiVersion": "apps/v1", "kind": owner, "name": "o", "uid": "u", "controller": True}
        ]
    meta.update(extra.pop("metadata", {}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"nodeName": node_name, "containers": [{"name": "c"}], **extra},
        "status": {"phase": "Running"},
    }


@pytest.fixture
async def api(kmock: km.KubernetesEmulator) -> AsyncIterator[Any]:
    kmock.objects["v1/nodes", None, "n1"] = node()
    api = client.ApiClient(client.Configuration(host=str(kmock.url).rstrip("/")))
    yield api
    await api.close()


def evictions(kmock: km.KubernetesEmulator, answer: Callable[[str, int], int]) -> list[str]:
    """Answer each eviction with `answer(pod, nth_try)`; a 200 deletes the pod as the API server would."""
    tries: dict[str, int] = {}
    log: list[str] = []

    def react(request: km.Request) -> km.Response:
        namespace, name = request.namespace or "default", request.name or ""
        tries[name] = tries.get(name, 0) + 1
        status = answer(name, tries[name])
        log.append(f"{name}:{status}")
        if status == 200:
            del kmock.objects["v1/pods", namespace, name]
            return km.Response(status=201, payload={"kind": "Status", "status": "Success"})
        return km.Response(
            status=status,
            payload={
                "kind": "Status",
                "code": status,
                "reason": "TooManyRequests",
                "message": "Cannot evict pod as it would violate the pod's disruption budget.",
            },
        )

    kmock["post", EVICTION] << react
    return log


async def no_progress(_: StepProgress) -> None:
    return None


async def test_cordon_patches_unschedulable_with_our_mark_and_uncordon_undoes_only_ours(
    kmock: km.KubernetesEmulator, api: Any
) -> None:
    driver = KubernetesDriver(api, "n1")
    assert (await driver.cordon("r1")).changed
    stored = kmock.objects["v1/nodes", None, "n1"]
    assert stored["spec"]["unschedulable"] is True
    assert stored["metadata"]["annotations"][CORDONED_BY_ANNOTATION] == "r1"
    patch = kmock["patch"][-1]
    assert patch.headers["Content-Type"].startswith("application/merge-patch+json")
    assert not (await driver.uncordon("another-rollout")).changed
    assert (await driver.uncordon("r1")).changed
    assert kmock.objects["v1/nodes", None, "n1"]["spec"]["unschedulable"] is False


async def test_a_node_cordoned_by_an_operator_is_reported_and_left_alone(
    kmock: km.KubernetesEmulator, api: Any
) -> None:
    kmock.objects["v1/nodes", None, "n1"] = node(unschedulable=True)
    driver = KubernetesDriver(api, "n1")
    assert (await driver.cordon("r1")).was_cordoned
    assert not (await driver.uncordon("r1")).changed
    assert len(kmock["patch"]) == 0


async def test_drain_evicts_with_200_and_skips_daemonset_and_mirror_pods(
    kmock: km.KubernetesEmulator, api: Any
) -> None:
    kmock.objects["v1/pods", "default", "web-1"] = pod("web-1")
    kmock.objects["v1/pods", "default", "proxy"] = pod("proxy", owner="DaemonSet")
    kmock.objects["v1/pods", "default", "static"] = pod(
        "static", owner="Node", metadata={"annotations": {"kubernetes.io/config.mirror": "x"}}
    )
    kmock.objects["v1/pods", "default", "elsewhere"] = pod("elsewhere", node_name="n2")
    log = evictions(kmock, lambda name, n: 200)
    result = await KubernetesDriver(api, "n1").drain("r1", DrainOptions(eviction_retry_s=0.01), no_progress)
    assert log == ["web-1:200"]
    assert [p.name for p in result.evicted] == ["web-1"]
    assert sorted(p.name for p in result.skipped) == ["proxy", "static"]


async def test_drain_retries_a_429_until_the_budget_allows(kmock: km.KubernetesEmulator, api: Any) -> None:
    kmock.objects["v1/pods", "default", "web-1"] = pod("web-1")
    log = evictions(kmock, lambda name, n: 429 if n < 3 else 200)
    metrics = AgentMetrics()
    driver = KubernetesDriver(api, "n1", metrics=metrics)
    result = await driver.drain("r1", DrainOptions(eviction_retry_s=0.01), no_progress)
    assert log == ["web-1:429", "web-1:429", "web-1:200"]
    assert [p.name for p in result.evicted] == ["web-1"]
    # On the agent's /metrics: two evictions blocked by the budget, one accepted.
    assert metrics.evictions.value(result="blocked") == 2 and metrics.evictions.value(result="evicted") == 1


async def test_drain_that_stays_refused_times_out_naming_the_blocking_pods(
    kmock: km.KubernetesEmulator, api: Any
) -> None:
    kmock.objects["v1/pods", "default", "web-1"] = pod("web-1")
    kmock.objects["v1/pods", "default", "web-2"] = pod("web-2")
    evictions(kmock, lambda name, n: 200 if name == "web-2" else 429)
    with pytest.raises(StepFailed) as failed:
        await KubernetesDriver(api, "n1").drain("r1", DrainOptions(timeout_s=0.3, eviction_retry_s=0.02), no_progress)
    assert failed.value.reason == "drain_timeout"
    assert [p.name for p in failed.value.blocking_pods] == ["web-1"]
    assert (
        "disruption budget" in failed.value.blocking_pods[0].reason.lower()
        or "429" in failed.value.blocking_pods[0].reason
    )
    assert "default/web-1" in failed.value.message
    assert kmock.objects["v1/pods", "default", "web-1"]["metadata"]["name"] == "web-1"  # evicted never, deleted never
    assert len(kmock["delete"]) == 0


async def test_unmanaged_and_emptydir_pods_follow_the_step_options(kmock: km.KubernetesEmulator, api: Any) -> None:
    kmock.objects["v1/pods", "default", "bare"] = pod("bare", owner="")
    kmock.objects["v1/pods", "default", "cache"] = pod("cache", volumes=[{"name": "v", "emptyDir": {}}])
    log = evictions(kmock, lambda name, n: 200)
    with pytest.raises(StepFailed) as refused:
        await KubernetesDriver(api, "n1").drain("r1", DrainOptions(eviction_retry_s=0.01), no_progress)
    assert {p.name for p in refused.value.blocking_pods} == {"bare", "cache"} and log == []
    options = DrainOptions(eviction_retry_s=0.01, evict_unmanaged_pods=True, delete_emptydir_data=True)
    result = await KubernetesDriver(api, "n1").drain("r1", options, no_progress)
    assert sorted(p.name for p in result.evicted) == ["bare", "cache"]


async def test_verify_waits_for_ready_at_the_target_kubelet(kmock: km.KubernetesEmulator, api: Any) -> None:
    driver = KubernetesDriver(api, "n1", poll_s=0.02)
    target = TargetVersions(kubernetes_version="v1.30.2")
    with pytest.raises(StepFailed, match=r"want Ready at v1\.30\.2"):
        await driver.verify(target, timeout_s=0.1)
    kmock.objects["v1/nodes", None, "n1"] = node(version="v1.30.2")
    assert await driver.verify(target, timeout_s=1.0) == "v1.30.2"
    facts = await driver.facts()
    assert facts.role.value == "control-plane" and facts.capacity.cpu_millis == 4000
