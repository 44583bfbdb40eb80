"""Where the cluster agent applies manifests: the Kubernetes API (server-side apply) or a simulated cluster.

Both resolve an object's scope first (`resolve`, from API discovery for Kubernetes: restmap.py) and answer per
object what happened (created, configured, unchanged, deleted) with a message. The Kubernetes backend sends
`PATCH` with `application/apply-patch+yaml` and `fieldManager`, without `force`: a field another manager owns
is left to it (ssa_conflicts.py) and named in the message. The simulated one keeps objects in memory and
records every call, so tests and `flotilla sim` can see it.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from flotilla_contracts.v1.scheduler_events import ApplyResult
from flotilla_node_agent.restmap import MappingFailed, ObjectRef, RestMapper, RestMapping
from flotilla_node_agent.ssa_conflicts import CannotDrop, Conflict, conflicts_of, without_fields

APPLY_PATCH = "application/apply-patch+yaml"
# Applying again after giving fields up can meet a manager that took more meanwhile; past this, give up.
MAX_CONFLICT_ROUNDS = 3

# Well-known cluster-scoped kinds, for the simulated cluster only (the real one asks discovery).
SIM_CLUSTER_SCOPED = frozenset(
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
        "CSIDriver",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
        "ValidatingAdmissionPolicy",
        "APIService",
        "ClusterIssuer",
        "ClusterPolicy",
        "GatewayClass",
        "FlowSchema",
    }
)


class ApplyFailed(Exception):
    """One object could not be resolved, applied or deleted; `temporary` when retrying later may help."""

    def __init__(self, message: str, *, temporary: bool = False) -> None:
        super().__init__(message)
        self.temporary = temporary


@dataclass(frozen=True)
class Applied:
    """What happened to one object, and what the report should say about it (fields left to other managers)."""

    result: ApplyResult
    message: str = ""


class ApplyBackend(Protocol):
    """Resolves, applies and deletes objects in one cluster."""

    async def resolve(self, manifest: dict[str, Any]) -> ObjectRef:
        """The object's reference with the scope the cluster gives its kind; raises ApplyFailed."""
        ...

    async def apply(self, ref: ObjectRef, manifest: dict[str, Any], field_manager: str) -> Applied: ...

    async def delete(self, ref: ObjectRef) -> Applied: ...


@dataclass
class SimApplyBackend:
    """An in-memory cluster: `objects` holds what is applied, `history` every call in order."""

    objects: dict[ObjectRef, dict[str, Any]] = field(default_factory=dict)
    history: list[tuple[str, ObjectRef, ApplyResult]] = field(default_factory=list)
    fail_kinds: frozenset[str] = frozenset()  # kinds this simulated API server refuses (tests)
    unknown_kinds: frozenset[str] = frozenset()  # kinds it does not serve (tests)

    async def resolve(self, manifest: dict[str, Any]) -> ObjectRef:
        kind = str(manifest.get("kind", ""))
        if kind in self.unknown_kinds:
            raise ApplyFailed(f"the simulated API server serves no kind {kind}")
        return ObjectRef.of(manifest, namespaced=kind not in SIM_CLUSTER_SCOPED)

    async def apply(self, ref: ObjectRef, manifest: dict[str, Any], field_manager: str) -> Applied:
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
        return Applied(result)

    async def delete(self, ref: ObjectRef) -> Applied:
        self.objects.pop(ref, None)
        self.history.append(("delete", ref, ApplyResult.DELETED))
        return Applied(ApplyResult.DELETED)


class _HttpError(Exception):
    """An API server's error answer, kept inside this module."""

    def __init__(self, method: str, path: str, status: int, reason: str, body: Any) -> None:
        self.method, self.path, self.status, self.reason, self.body = method, path, status, reason, body
        said = body.get("message", "") if isinstance(body, dict) else ""
        super().__init__(f"{method} {path} answered {status} {reason}" + (f": {said}" if said else ""))

    @property
    def temporary(self) -> bool:
        return self.status in (401, 429) or self.status >= 500

    def failed(self, ref: ObjectRef) -> ApplyFailed:
        next_step = "; retrying" if self.temporary else ""
        return ApplyFailed(f"{ref}: {self}{next_step}", temporary=self.temporary)


def _decoded(body: Any) -> Any:
    try:
        return json.loads(body) if isinstance(body, (str, bytes)) else body
    except ValueError:
        return body


@dataclass
class KubernetesApplyBackend:
    """Server-side apply through a kubernetes-asyncio `ApiClient`, REST paths from discovery.

    Conflict policy: Flotilla owns what it applies and takes no field another manager owns. It applies
    without `force`; on a 409 it drops exactly the conflicting fields from its manifest and applies again
    (at most MAX_CONFLICT_ROUNDS times), so it stops claiming them and their owner keeps them, and the
    object is reported applied with a message naming them."""

    api: Any
    mapper: RestMapper = field(init=False)

    def __post_init__(self) -> None:
        self.mapper = RestMapper(self._discover)

    async def _request(
        self, method: str, path: str, *, query: list[tuple[str, str]] | None = None, body: Any = None
    ) -> Any:
        from kubernetes_asyncio.client.exceptions import ApiException

        headers = {"Accept": "application/json"}
        if method == "PATCH":
            headers["Content-Type"] = APPLY_PATCH
        try:
            return await self.api.call_api(
                path,
                method,
                query_params=query or [],
                header_params=headers,
                body=body,
                response_types_map={200: "object", 201: "object", 202: "object"},
                auth_settings=["BearerToken"],
                _return_http_data_only=True,
            )
        except ApiException as exc:
            raise _HttpError(method, path, int(exc.status or 0), str(exc.reason), _decoded(exc.body)) from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ApplyFailed(f"{method} {path}: {exc or type(exc).__name__}; retrying", temporary=True) from None

    async def _discover(self, path: str) -> dict[str, Any] | None:
        try:
            document = await self._request("GET", path)
        except _HttpError as exc:
            if exc.status == 404:
                return None
            raise MappingFailed(f"discovery: {exc}", temporary=exc.temporary) from None
        except ApplyFailed as exc:
            raise MappingFailed(f"discovery: {exc}", temporary=True) from None
        return document if isinstance(document, dict) else None

    async def _mapping(self, api_version: str, kind: str, name: str) -> RestMapping:
        try:
            return await self.mapper.mapping(api_version, kind)
        except MappingFailed as exc:
            raise ApplyFailed(f"{kind} {name}: {exc}", temporary=exc.temporary) from None

    @staticmethod
    def _path(mapping: RestMapping, ref: ObjectRef) -> str:
        try:
            return mapping.path(ref)
        except MappingFailed as exc:
            raise ApplyFailed(str(exc)) from None

    async def resolve(self, manifest: dict[str, Any]) -> ObjectRef:
        name = str((manifest.get("metadata") or {}).get("name", ""))
        mapping = await self._mapping(str(manifest.get("apiVersion", "")), str(manifest.get("kind", "")), name)
        return ObjectRef.of(manifest, namespaced=mapping.namespaced)

    async def apply(self, ref: ObjectRef, manifest: dict[str, Any], field_manager: str) -> Applied:
        mapping = await self._mapping(ref.api_version, ref.kind, ref.name)
        path = self._path(mapping, ref)
        body = copy.deepcopy(manifest)
        meta = body.setdefault("metadata", {})
        if mapping.namespaced:
            meta["namespace"] = ref.namespace
        else:
            meta.pop("namespace", None)
        try:
            before = await self._request("GET", path)
        except _HttpError as exc:
            if exc.status != 404:
                raise exc.failed(ref) from None
            before = None
        after, left = await self._apply_leaving_conflicts(ref, path, body, field_manager)
        message = "left to their other managers: " + ", ".join(map(str, left)) if left else ""
        if before is None:
            return Applied(ApplyResult.CREATED, message)
        version = (before.get("metadata") or {}).get("resourceVersion")
        new_version = ((after or {}).get("metadata") or {}).get("resourceVersion")
        unchanged = version and version == new_version
        return Applied(ApplyResult.UNCHANGED if unchanged else ApplyResult.CONFIGURED, message)

    async def _apply_leaving_conflicts(
        self, ref: ObjectRef, path: str, body: dict[str, Any], field_manager: str
    ) -> tuple[Any, list[Conflict]]:
        left: list[Conflict] = []
        for round_ in range(MAX_CONFLICT_ROUNDS + 1):
            try:
                return await self._request("PATCH", path, query=[("fieldManager", field_manager)], body=body), left
            except _HttpError as exc:
                conflicts = conflicts_of(exc.body) if exc.status == 409 else []
                if exc.status == 404:
                    await self._check_mapping(ref, path, exc)
                if not conflicts:
                    raise exc.failed(ref) from None
                if round_ == MAX_CONFLICT_ROUNDS:
                    raise ApplyFailed(
                        f"{ref}: still conflicting after giving up {len(left)} field(s) {MAX_CONFLICT_ROUNDS} times: "
                        + ", ".join(map(str, conflicts))
                    ) from None
                try:
                    body = without_fields(body, [c.field for c in conflicts])
                except CannotDrop as err:
                    owners = ", ".join(map(str, conflicts))
                    raise ApplyFailed(f"{ref}: {err} (conflicts: {owners})") from None
                left.extend(conflicts)
        raise AssertionError("unreachable")

    async def _check_mapping(self, ref: ObjectRef, path: str, exc: _HttpError) -> None:
        """A 404 on apply: when discovery now maps the kind elsewhere (a CRD changed), retry with the new mapping."""
        try:
            served = await self.mapper.refresh(ref.api_version)
        except MappingFailed as err:
            raise ApplyFailed(f"{ref}: {err}", temporary=err.temporary) from None
        mapping = (served or {}).get(ref.kind)
        if mapping is None or self._path(mapping, ref) != path:
            raise ApplyFailed(f"{ref}: {exc}; discovery changed, retrying", temporary=True) from None

    async def delete(self, ref: ObjectRef) -> Applied:
        try:
            mapping = await self.mapper.mapping(ref.api_version, ref.kind)
        except MappingFailed as exc:
            if exc.temporary:
                raise ApplyFailed(f"{ref}: {exc}", temporary=True) from None
            return Applied(
                ApplyResult.DELETED,
                f"nothing to delete: the API server no longer serves {ref.kind} in {ref.api_version}",
            )
        path = self._path(mapping, ref)
        try:
            await self._request("DELETE", path, query=[("propagationPolicy", "Background")])
        except _HttpError as exc:
            if exc.status != 404:
                raise exc.failed(ref) from None
            return Applied(ApplyResult.DELETED, "already gone")
        return Applied(ApplyResult.DELETED)
