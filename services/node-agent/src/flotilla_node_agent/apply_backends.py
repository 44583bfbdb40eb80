"""Where the cluster agent applies manifests: the Kubernetes API (server-side apply) or a simulated cluster.

Both answer per object what happened (created, configured, unchanged, deleted). The Kubernetes backend
uses kubernetes-asyncio's ApiClient for raw REST paths (no discovery round trip): `PATCH` with
`application/apply-patch+yaml`, `fieldManager` and `force=true`, as `kubectl apply --server-side` does.
The simulated one keeps objects in memory and records every call, so tests and `flotilla sim` can see it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from flotilla_contracts.v1.scheduler_events import ApplyResult

APPLY_PATCH = "application/apply-patch+yaml"

# Kinds whose plural is not `<kind lower-cased>s`, and kinds that live outside namespaces.
_IRREGULAR = {
    "Endpoints": "endpoints",
    "Ingress": "ingresses",
    "IngressClass": "ingressclasses",
    "NetworkPolicy": "networkpolicies",
    "PodSecurityPolicy": "podsecuritypolicies",
    "PriorityClass": "priorityclasses",
    "StorageClass": "storageclasses",
    "RuntimeClass": "runtimeclasses",
}
CLUSTER_SCOPED = frozenset(
    {
        "Namespace",
        "Node",
        "PersistentVolume",
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "StorageClass",
        "PriorityClass",
        "IngressClass",
        "RuntimeClass",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
        "APIService",
    }
)


class ApplyFailed(Exception):
    """One object could not be applied or deleted; `temporary` when retrying later may help."""

    def __init__(self, message: str, *, temporary: bool = False) -> None:
        super().__init__(message)
        self.temporary = temporary


@dataclass(frozen=True, order=True)
class ObjectRef:
    """Identifies one Kubernetes object."""

    api_version: str
    kind: str
    namespace: str
    name: str

    @classmethod
    def of(cls, manifest: dict[str, Any]) -> ObjectRef:
        meta = manifest.get("metadata") or {}
        kind = str(manifest.get("kind", ""))
        namespace = "" if kind in CLUSTER_SCOPED else str(meta.get("namespace") or "default")
        return cls(str(manifest.get("apiVersion", "")), kind, namespace, str(meta.get("name", "")))

    def path(self) -> str:
        """The REST path of the object."""
        group_version = f"/api/{self.api_version}" if "/" not in self.api_version else f"/apis/{self.api_version}"
        plural = _IRREGULAR.get(self.kind) or self.kind.lower() + ("es" if self.kind.endswith("s") else "s")
        scope = f"/namespaces/{self.namespace}" if self.namespace else ""
        return f"{group_version}{scope}/{plural}/{self.name}"

    def __str__(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind} {where}{self.name}"


class ApplyBackend(Protocol):
    """Applies and deletes objects in one cluster."""

    async def apply(self, manifest: dict[str, Any], field_manager: str) -> ApplyResult: ...

    async def delete(self, ref: ObjectRef) -> ApplyResult: ...


@dataclass
class SimApplyBackend:
    """An in-memory cluster: `objects` holds what is applied, `history` every call in order."""

    objects: dict[ObjectRef, dict[str, Any]] = field(default_factory=dict)
    history: list[tuple[str, ObjectRef, ApplyResult]] = field(default_factory=list)
    fail_kinds: frozenset[str] = frozenset()  # kinds this simulated API server refuses (tests)

    async def apply(self, manifest: dict[str, Any], field_manager: str) -> ApplyResult:
        ref = ObjectRef.of(manifest)
        if ref.kind in self.fail_kinds:
            self.history.append(("apply", ref, ApplyResult.FAILED))
            raise ApplyFailed(f"{ref}: the simulated API server refuses {ref.kind}")
        before = self.objects.get(ref)
        result = (
            ApplyResult.CREATED
            if before is None
            else ApplyResult.UNCHANGED
            if before == manifest
            else ApplyResult.CONFIGURED
        )
        self.objects[ref] = copy.deepcopy(manifest)
        self.history.append(("apply", ref, result))
        return result

    async def delete(self, ref: ObjectRef) -> ApplyResult:
        self.objects.pop(ref, None)
        self.history.append(("delete", ref, ApplyResult.DELETED))
        return ApplyResult.DELETED


@dataclass
class KubernetesApplyBackend:
    """Server-side apply through a kubernetes-asyncio `ApiClient`."""

    api: Any

    async def _call(self, path: str, method: str, **kwargs: Any) -> Any:
        from kubernetes_asyncio.client.exceptions import ApiException

        try:
            return await self.api.call_api(
                path,
                method,
                response_types_map={200: "object", 201: "object"},
                auth_settings=["BearerToken"],
                _return_http_data_only=True,
                **kwargs,
            )
        except ApiException as exc:
            if exc.status == 404 and method != "PATCH":
                return None
            temporary = exc.status in (409, 429) or exc.status >= 500
            raise ApplyFailed(f"{method} {path}: {exc.status} {exc.reason}", temporary=temporary) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ApplyFailed(f"{method} {path}: {exc}", temporary=True) from None

    async def apply(self, manifest: dict[str, Any], field_manager: str) -> ApplyResult:
        ref = ObjectRef.of(manifest)
        body = copy.deepcopy(manifest)
        if ref.namespace:
            body.setdefault("metadata", {})["namespace"] = ref.namespace
        before = await self._call(ref.path(), "GET", header_params={"Accept": "application/json"})
        after = await self._call(
            ref.path(),
            "PATCH",
            query_params=[("fieldManager", field_manager), ("force", "true")],
            header_params={"Content-Type": APPLY_PATCH, "Accept": "application/json"},
            body=body,
        )
        if before is None:
            return ApplyResult.CREATED
        version = (before.get("metadata") or {}).get("resourceVersion")
        new_version = ((after or {}).get("metadata") or {}).get("resourceVersion")
        return ApplyResult.UNCHANGED if version and version == new_version else ApplyResult.CONFIGURED

    async def delete(self, ref: ObjectRef) -> ApplyResult:
        await self._call(ref.path(), "DELETE", header_params={"Accept": "application/json"})
        return ApplyResult.DELETED
