"""REST mapping from discovery (restmap.py) and giving up conflicting fields (ssa_conflicts.py): the pure parts."""

from __future__ import annotations

import re
from typing import Any

import pytest

from flotilla_node_agent.restmap import MappingFailed, ObjectRef, RestMapper, RestMapping, discovery_path
from flotilla_node_agent.ssa_conflicts import CannotDrop, Conflict, conflicts_of, without_fields


def resource_list(group_version: str, *resources: tuple[str, str, bool]) -> dict[str, Any]:
    return {
        "kind": "APIResourceList",
        "groupVersion": group_version,
        "resources": [{"name": n, "kind": k, "namespaced": ns, "verbs": ["get", "patch"]} for n, k, ns in resources],
    }


class Discovery:
    """A discovery endpoint that serves `documents` and counts what it is asked."""

    def __init__(self, documents: dict[str, dict[str, Any]]) -> None:
        self.documents = documents
        self.asked: list[str] = []
        self.down = False

    async def __call__(self, path: str) -> dict[str, Any] | None:
        self.asked.append(path)
        if self.down:
            raise MappingFailed("GET answered 503", temporary=True)
        return self.documents.get(path)


def test_discovery_paths_of_the_core_group_and_named_groups() -> None:
    assert discovery_path("v1") == "/api/v1"
    assert discovery_path("cert-manager.io/v1") == "/apis/cert-manager.io/v1"
    for bad in ("", "a/b/c", "apps/", "apps/v1?x=1", "../v1"):
        with pytest.raises(MappingFailed):
            discovery_path(bad)


async def test_kinds_map_to_their_served_plural_and_scope_and_subresources_are_skipped() -> None:
    discovery = Discovery(
        {
            "/apis/cert-manager.io/v1": resource_list(
                "cert-manager.io/v1",
                ("clusterissuers", "ClusterIssuer", False),
                ("clusterissuers/status", "ClusterIssuer", False),
                ("issuers", "Issuer", True),
            ),
            "/apis/apps/v1": resource_list(
                "apps/v1", ("deployments/scale", "Scale", True), ("deployments", "Deployment", True)
            ),
        }
    )
    mapper = RestMapper(discovery)
    issuer = await mapper.mapping("cert-manager.io/v1", "ClusterIssuer")
    assert issuer == RestMapping("cert-manager.io/v1", "ClusterIssuer", "clusterissuers", namespaced=False)
    ref = ObjectRef.of({"kind": "ClusterIssuer", "metadata": {"name": "le", "namespace": "web"}}, namespaced=False)
    assert ref.namespace == "" and issuer.path(ref) == "/apis/cert-manager.io/v1/clusterissuers/le"
    deployment = await mapper.mapping("apps/v1", "Deployment")
    ref = ObjectRef.of({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}}, namespaced=True)
    assert deployment.path(ref) == "/apis/apps/v1/namespaces/default/deployments/web"
    with pytest.raises(MappingFailed, match="serves no kind Scale"):
        await mapper.mapping("apps/v1", "Scale")
    await mapper.mapping("cert-manager.io/v1", "Issuer")
    assert discovery.asked == ["/apis/cert-manager.io/v1", "/apis/apps/v1", "/apis/apps/v1"]  # cached, refreshed once


async def test_a_kind_added_after_the_cache_was_filled_is_found_by_one_refresh() -> None:
    discovery = Discovery({"/apis/example.com/v1": resource_list("example.com/v1", ("widgets", "Widget", True))})
    mapper = RestMapper(discovery)
    await mapper.mapping("example.com/v1", "Widget")
    discovery.documents["/apis/example.com/v1"]["resources"].append(
        {"name": "gadgets", "kind": "Gadget", "namespaced": False}
    )
    assert (await mapper.mapping("example.com/v1", "Gadget")).resource == "gadgets"
    assert len(discovery.asked) == 2


async def test_an_unserved_group_version_is_permanent_and_a_failing_discovery_is_temporary() -> None:
    discovery = Discovery({})
    mapper = RestMapper(discovery)
    with pytest.raises(MappingFailed, match=re.escape("does not serve kyverno.io/v1")) as unknown:
        await mapper.mapping("kyverno.io/v1", "ClusterPolicy")
    assert not unknown.value.temporary
    discovery.down = True
    with pytest.raises(MappingFailed) as down:
        await mapper.mapping("kyverno.io/v1", "ClusterPolicy")
    assert down.value.temporary


@pytest.mark.parametrize("name", ["", "a/b", "..", "x?y", "%2e"])
def test_a_name_that_is_not_a_path_segment_is_refused(name: str) -> None:
    mapping = RestMapping("v1", "ConfigMap", "configmaps", namespaced=True)
    with pytest.raises(MappingFailed):
        mapping.path(ObjectRef("v1", "ConfigMap", "default", name))


def conflict_status(*fields: str) -> dict[str, Any]:
    causes = [
        {"reason": "FieldManagerConflict", "message": 'conflict with "hpa" using apps/v1', "field": f} for f in fields
    ]
    return {"kind": "Status", "code": 409, "reason": "Conflict", "details": {"causes": causes}}


def test_conflicts_are_read_from_the_status_causes() -> None:
    assert conflicts_of(conflict_status(".spec.replicas")) == [
        Conflict(".spec.replicas", 'conflict with "hpa" using apps/v1')
    ]
    assert conflicts_of({"kind": "Status", "code": 409, "reason": "Conflict", "message": "modified"}) == []
    assert conflicts_of("not json") == []


def manifest() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "web",
            "labels": {"app.kubernetes.io/name": "web", "app": "web"},
            "finalizers": ["a", "b"],
        },
        "spec": {
            "replicas": 2,
            "template": {
                "spec": {
                    "containers": [
                        {"name": "side", "image": "side:1"},
                        {"name": "web", "image": "web:1", "ports": [{"containerPort": 80}, {"containerPort": 81}]},
                    ]
                }
            },
        },
    }


def test_exactly_the_conflicting_fields_are_dropped() -> None:
    original = manifest()
    body = without_fields(
        original,
        [
            ".spec.replicas",
            '.spec.template.spec.containers[name="web"].image',
            '.spec.template.spec.containers[name="web"].ports[containerPort=81,protocol="TCP"]',
            ".metadata.labels.app.kubernetes.io/name",
            '.metadata.finalizers[="a"]',
        ],
    )
    assert "replicas" not in body["spec"]
    assert body["spec"]["template"]["spec"]["containers"] == [
        {"name": "side", "image": "side:1"},
        {"name": "web", "ports": [{"containerPort": 80}]},
    ]
    assert body["metadata"]["labels"] == {"app": "web"}
    assert body["metadata"]["finalizers"] == ["b"]
    assert original == manifest()  # the caller's manifest is untouched


@pytest.mark.parametrize(
    "field", [".metadata.name", ".kind", ".spec.paused", '.spec.template.spec.containers[name="x"]']
)
def test_a_field_that_names_the_object_or_is_not_in_the_manifest_cannot_be_dropped(field: str) -> None:
    with pytest.raises(CannotDrop, match=re.escape(field)):
        without_fields(manifest(), [field])
