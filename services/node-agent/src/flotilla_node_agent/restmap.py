"""Where an object lives on this cluster's API server (resource plural, scope), asked of API discovery.

Never guessed from the kind's spelling: the mapper reads the discovery document of the object's group-version
(`GET /api/v1`, `GET /apis/<group>/<version>`, readable by every authenticated user through the bootstrap
`system:discovery` role), so every kind the server serves works: irregular plurals, cluster-scoped CRDs, a CRD
established a moment ago. A group-version is fetched when one of its kinds is first needed and again when a
kind is missing from the cached answer; a kind still missing after that refresh is unknown (permanent), a
discovery call that fails (connection, 429, 5xx) is temporary.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

# Characters that would move a REST path somewhere else if they were in a name or namespace.
_PATH_UNSAFE = frozenset("/?#%\\")

# GET a discovery path: the decoded document, None when the server answers 404; raises MappingFailed otherwise.
Fetch = Callable[[str], Awaitable[dict[str, Any] | None]]


class MappingFailed(Exception):
    """No REST mapping for an object; `temporary` when asking discovery again later may help."""

    def __init__(self, message: str, *, temporary: bool = False) -> None:
        super().__init__(message)
        self.temporary = temporary


@dataclass(frozen=True, order=True)
class ObjectRef:
    """Identifies one Kubernetes object, scoped as the server says: namespace "" when cluster-scoped."""

    api_version: str
    kind: str
    namespace: str
    name: str

    @classmethod
    def of(cls, manifest: dict[str, Any], *, namespaced: bool) -> ObjectRef:
        """A namespaced object without a namespace is in "default"; a cluster-scoped one has none, whatever it says."""
        meta = manifest.get("metadata") or {}
        namespace = str(meta.get("namespace") or "default") if namespaced else ""
        return cls(
            str(manifest.get("apiVersion", "")), str(manifest.get("kind", "")), namespace, str(meta.get("name", ""))
        )

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def identity(self) -> tuple[str, str, str, str]:
        """The object whatever version it is read at: group, kind, namespace, name."""
        return self.group, self.kind, self.namespace, self.name

    def __str__(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind} {where}{self.name}"


@dataclass(frozen=True)
class RestMapping:
    """One kind as a group-version serves it."""

    api_version: str
    kind: str
    resource: str
    namespaced: bool

    def path(self, ref: ObjectRef) -> str:
        """The object's REST path; raises MappingFailed for a name or namespace that is not a path segment."""
        for label, value in (("metadata.name", ref.name), ("metadata.namespace", ref.namespace)):
            if value in (".", "..") or _PATH_UNSAFE.intersection(value):
                raise MappingFailed(f"{ref}: {label} {value!r} is not a valid Kubernetes name")
        if not ref.name:
            raise MappingFailed(f"{ref.kind}: the manifest has no metadata.name")
        scope = f"/namespaces/{ref.namespace}" if self.namespaced else ""
        return f"{discovery_path(self.api_version)}{scope}/{self.resource}/{ref.name}"


def discovery_path(api_version: str) -> str:
    """`/api/v1` for the core group, `/apis/<group>/<version>` for the others."""
    group, _, version = api_version.rpartition("/")
    unsafe = _PATH_UNSAFE.intersection(group) or _PATH_UNSAFE.intersection(version) or ".." in api_version
    if not version or (group == "" and "/" in api_version) or unsafe or not api_version.isascii():
        raise MappingFailed(f"apiVersion {api_version!r} is not <version> or <group>/<version>")
    return f"/apis/{group}/{version}" if group else f"/api/{version}"


def mappings_from(api_version: str, document: dict[str, Any]) -> dict[str, RestMapping]:
    """The kinds an `APIResourceList` serves as resources of their own (subresources such as `x/scale` are skipped)."""
    found: dict[str, RestMapping] = {}
    for resource in document.get("resources") or []:
        name, kind = str(resource.get("name", "")), str(resource.get("kind", ""))
        if not name or not kind or "/" in name or kind in found:
            continue
        found[kind] = RestMapping(api_version, kind, name, bool(resource.get("namespaced")))
    return found


class RestMapper:
    """Caches discovery per group-version; refreshes one when a kind is not in it."""

    def __init__(self, fetch: Fetch) -> None:
        self._fetch = fetch
        self._known: dict[str, dict[str, RestMapping]] = {}

    async def mapping(self, api_version: str, kind: str) -> RestMapping:
        """The mapping of `kind` in `api_version`; raises MappingFailed (permanent: the server serves no such kind)."""
        cached = self._known.get(api_version, {}).get(kind)
        if cached is not None:
            return cached
        served = await self.refresh(api_version)
        if served is None:
            raise MappingFailed(
                f"the API server does not serve {api_version} (is the CustomResourceDefinition or API for it "
                "installed?); fix the manifest or install it, then apply again"
            )
        if kind not in served:
            raise MappingFailed(
                f"the API server serves no kind {kind} in {api_version} "
                f"(it serves {', '.join(sorted(served)) or 'none'}); "
                "fix the manifest or install its CustomResourceDefinition, then apply again"
            )
        return served[kind]

    async def refresh(self, api_version: str) -> dict[str, RestMapping] | None:
        """Ask discovery again for one group-version; None when the server does not serve it."""
        document = await self._fetch(discovery_path(api_version))
        if document is None:
            self._known.pop(api_version, None)
            return None
        self._known[api_version] = mappings_from(api_version, document)
        return self._known[api_version]
