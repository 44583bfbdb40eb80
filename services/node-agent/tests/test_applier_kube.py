"""Server-side apply through kubernetes-asyncio against kmock: the PATCH, its content type and parameters,
create versus configure, and deletion when pruning.

kmock answers a PATCH of a missing object with 404, where a real API server's server-side apply creates
it: the emulator below creates the object first for apply patches (as the eviction reaction does for
evictions in test_kube_driver.py). It merges patches plainly, so this shows the requests, not field
ownership.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

pytest.importorskip("kubernetes_asyncio", reason="kubernetes-asyncio is not installed (node-agent dependency)")

import kmock as km
from kubernetes_asyncio import client

from flotilla_contracts.v1.scheduler_events import ApplyResult
from flotilla_node_agent.apply_backends import APPLY_PATCH, KubernetesApplyBackend, ObjectRef


class ServerSideApplyEmulator(km.KubernetesEmulator):  # type: ignore[misc]
    """Creates the object on an apply patch to a missing one, as server-side apply does."""

    async def _handle(self, request: Any) -> Any:
        if (
            request.resource is not None
            and request.name
            and str(request.method).upper().endswith("PATCH")
            and APPLY_PATCH in request.headers.get("Content-Type", "")
            and (request.resource, request.namespace, request.name) not in self._objects
        ):
            self._objects[request.resource, request.namespace, request.name] = request.data
        return await super()._handle(request)


def deployment(replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"replicas": replicas},
    }


@pytest.fixture
async def api(kmock: km.KubernetesEmulator) -> AsyncIterator[Any]:
    api = client.ApiClient(client.Configuration(host=str(kmock.url).rstrip("/")))
    yield api
    await api.close()


@pytest.mark.kmock(cls=ServerSideApplyEmulator)
async def test_server_side_apply_creates_then_configures_with_our_field_manager(kmock: Any, api: Any) -> None:
    backend = KubernetesApplyBackend(api)
    assert await backend.apply(deployment(2), "flotilla") is ApplyResult.CREATED
    patch = kmock["patch"][-1]
    assert patch.headers["Content-Type"].startswith(APPLY_PATCH)
    assert patch.params["fieldManager"] == "flotilla"
    assert patch.params["force"] == "true"
    assert str(patch.url.path) == "/apis/apps/v1/namespaces/shop/deployments/web"
    assert kmock.objects["apps/v1/deployments", "shop", "web"]["spec"]["replicas"] == 2
    assert await backend.apply(deployment(5), "flotilla") is ApplyResult.CONFIGURED
    assert kmock.objects["apps/v1/deployments", "shop", "web"]["spec"]["replicas"] == 5


@pytest.mark.kmock(cls=ServerSideApplyEmulator)
async def test_core_objects_default_to_the_default_namespace_and_are_deleted_when_pruned(kmock: Any, api: Any) -> None:
    backend = KubernetesApplyBackend(api)
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"a": "1"}}
    assert await backend.apply(config, "flotilla") is ApplyResult.CREATED
    assert str(kmock["patch"][-1].url.path) == "/api/v1/namespaces/default/configmaps/settings"
    ref = ObjectRef.of(config)
    assert await backend.delete(ref) is ApplyResult.DELETED
    assert str(kmock["delete"][-1].url.path) == "/api/v1/namespaces/default/configmaps/settings"
    assert ("v1/configmaps", "default", "settings") not in kmock.objects


def test_rest_paths_of_cluster_scoped_and_irregular_kinds() -> None:
    assert (
        ObjectRef.of({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}).path()
        == "/api/v1/namespaces/shop"
    )
    ingress = {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "i", "namespace": "a"}}
    assert ObjectRef.of(ingress).path() == "/apis/networking.k8s.io/v1/namespaces/a/ingresses/i"
