"""Server-side apply through kubernetes-asyncio against kmock: discovery, the PATCH, its content type and
parameters (no `force`), create versus configure, a conflict answered by giving the field up, deletion.

kmock answers a PATCH of a missing object with 404, where a real API server's server-side apply creates it,
and it knows no field managers: the emulator below creates the object first for apply patches and answers
409 with a `FieldManagerConflict` cause while another manager "owns" `.spec.replicas`. It shows the
requests; tests/kube/test_apply.py shows field ownership on a real API server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

pytest.importorskip("kubernetes_asyncio", reason="kubernetes-asyncio is not installed (node-agent dependency)")

import kmock as km
from aiohttp import web
from kubernetes_asyncio import client

from flotilla_contracts.v1.scheduler_events import ApplyResult
from flotilla_node_agent.apply_backends import APPLY_PATCH, KubernetesApplyBackend
from flotilla_node_agent.restmap import ObjectRef

REPLICAS_OWNER = 'conflict with "hpa-controller" with subresource "scale" using apps/v1'


class ServerSideApplyEmulator(km.KubernetesEmulator):
    """Creates the object on an apply patch to a missing one; refuses `.spec.replicas` while others own it."""

    replicas_owned_elsewhere = False

    async def _handle(self, request: Any) -> Any:
        applying = (
            request.resource is not None
            and request.name
            and str(request.method).upper().endswith("PATCH")
            and APPLY_PATCH in request.headers.get("Content-Type", "")
        )
        if applying and self.replicas_owned_elsewhere and "replicas" in (request.data.get("spec") or {}):
            cause = {"reason": "FieldManagerConflict", "message": REPLICAS_OWNER, "field": ".spec.replicas"}
            status = {"kind": "Status", "code": 409, "reason": "Conflict", "details": {"causes": [cause]}}
            return web.json_response(status, status=409)
        if applying and (request.resource, request.namespace, request.name) not in self._objects:
            self._objects[request.resource, request.namespace, request.name] = request.data
        return await super()._handle(request)


def deployment(replicas: int, image: str = "web:1") -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"name": "web", "image": image}]}}},
    }


@pytest.fixture
async def api(kmock: km.KubernetesEmulator) -> AsyncIterator[Any]:
    kmock.resources["apps/v1/deployments"] = km.ResourceInfo(kind="Deployment", namespaced=True, subresources={"scale"})
    kmock.resources["v1/configmaps"] = km.ResourceInfo(kind="ConfigMap", namespaced=True)
    kmock.resources["cert-manager.io/v1/clusterissuers"] = km.ResourceInfo(kind="ClusterIssuer", namespaced=False)
    api = client.ApiClient(client.Configuration(host=str(kmock.url).rstrip("/")))
    yield api
    await api.close()


async def applied(backend: KubernetesApplyBackend, manifest: dict[str, Any]) -> tuple[ApplyResult, str]:
    ref = await backend.resolve(manifest)
    outcome = await backend.apply(ref, manifest, "flotilla")
    return outcome.result, outcome.message


@pytest.mark.kmock(cls=ServerSideApplyEmulator)
async def test_server_side_apply_creates_then_configures_with_our_field_manager_and_no_force(
    kmock: Any, api: Any
) -> None:
    backend = KubernetesApplyBackend(api)
    assert await applied(backend, deployment(2)) == (ApplyResult.CREATED, "")
    assert [str(r.url.path) for r in kmock["get"]][:1] == ["/apis/apps/v1"]  # discovery first
    patch = kmock["patch"][-1]
    assert patch.headers["Content-Type"].startswith(APPLY_PATCH)
    assert patch.params["fieldManager"] == "flotilla"
    assert "force" not in patch.params
    assert str(patch.url.path) == "/apis/apps/v1/namespaces/shop/deployments/web"
    assert kmock.objects["apps/v1/deployments", "shop", "web"]["spec"]["replicas"] == 2
    assert (await applied(backend, deployment(5)))[0] is ApplyResult.CONFIGURED
    assert kmock.objects["apps/v1/deployments", "shop", "web"]["spec"]["replicas"] == 5
    assert [str(r.url.path) for r in kmock["get"]].count("/apis/apps/v1") == 1  # discovery is cached


@pytest.mark.kmock(cls=ServerSideApplyEmulator)
async def test_a_field_another_manager_owns_is_dropped_and_named_and_the_rest_applied(kmock: Any, api: Any) -> None:
    backend = KubernetesApplyBackend(api)
    await applied(backend, deployment(2))
    kmock.replicas_owned_elsewhere = True
    result, message = await applied(backend, deployment(2, image="web:2"))
    assert result is ApplyResult.CONFIGURED
    assert message == f"left to their other managers: .spec.replicas ({REPLICAS_OWNER})"
    retried = kmock["patch"][-1]
    assert "replicas" not in retried.data["spec"] and "force" not in retried.params
    container = kmock.objects["apps/v1/deployments", "shop", "web"]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "web:2"


@pytest.mark.kmock(cls=ServerSideApplyEmulator)
async def test_core_objects_default_to_the_default_namespace_and_are_deleted_when_pruned(kmock: Any, api: Any) -> None:
    backend = KubernetesApplyBackend(api)
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"a": "1"}}
    assert (await applied(backend, config))[0] is ApplyResult.CREATED
    assert str(kmock["patch"][-1].url.path) == "/api/v1/namespaces/default/configmaps/settings"
    deleted = await backend.delete(ObjectRef("v1", "ConfigMap", "default", "settings"))
    assert deleted.result is ApplyResult.DELETED
    assert str(kmock["delete"][-1].url.path) == "/api/v1/namespaces/default/configmaps/settings"
    assert kmock["delete"][-1].params["propagationPolicy"] == "Background"
    assert ("v1/configmaps", "default", "settings") not in kmock.objects


@pytest.mark.kmock(cls=ServerSideApplyEmulator)
async def test_a_cluster_scoped_kind_gets_no_namespace_even_when_the_manifest_has_one(kmock: Any, api: Any) -> None:
    backend = KubernetesApplyBackend(api)
    issuer = {"apiVersion": "cert-manager.io/v1", "kind": "ClusterIssuer", "metadata": {"name": "le", "namespace": "x"}}
    ref = await backend.resolve(issuer)
    assert ref == ObjectRef("cert-manager.io/v1", "ClusterIssuer", "", "le")
    await backend.apply(ref, issuer, "flotilla")
    assert str(kmock["patch"][-1].url.path) == "/apis/cert-manager.io/v1/clusterissuers/le"
    assert "namespace" not in kmock["patch"][-1].data["metadata"]
