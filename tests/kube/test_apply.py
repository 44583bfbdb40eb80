"""Applying placed workloads on a real API server (issue 16 item 4): REST mapping from discovery for kinds a
guessed plural got wrong (and a CRD created a moment ago), server-side apply that leaves a field another
manager owns to it (an HPA-style `spec.replicas`), created / configured / unchanged as the server says, and
prune. Driven through ManifestApplier.apply with KubernetesApplyBackend, as the cluster agent runs it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from apply_support import apply, get, install_crds, kube_applier, stub_crd
from kube_support import ControlPlane, control_plane, eventually

from flotilla_contracts.v1.scheduler import AppliedState
from flotilla_contracts.v1.scheduler_events import ApplyResult

pytestmark = pytest.mark.kube


@pytest.fixture(scope="module")
def cp() -> Iterator[ControlPlane]:
    with control_plane(workers=1, kubelet_version="v1.36.0") as plane:
        yield plane


def obj(api_version: str, kind: str, name: str, **fields: Any) -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": kind, "metadata": {"name": name}, **fields}


# The six kinds, each with the path a real server serves it at (cluster-scoped, plurals the old table got wrong).
SIX = [
    (
        obj("cert-manager.io/v1", "ClusterIssuer", "letsencrypt", spec={"acme": {"server": "https://acme.invalid"}}),
        "/apis/cert-manager.io/v1/clusterissuers/letsencrypt",
    ),
    (
        obj(
            "admissionregistration.k8s.io/v1",
            "ValidatingAdmissionPolicy",
            "max-replicas",
            spec={
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": ["apps"],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE"],
                            "resources": ["deployments"],
                        }
                    ]
                },
                "validations": [{"expression": "object.spec.replicas <= 50"}],
            },
        ),
        "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies/max-replicas",
    ),
    (
        obj("kyverno.io/v1", "ClusterPolicy", "require-labels", spec={"rules": []}),
        "/apis/kyverno.io/v1/clusterpolicies/require-labels",
    ),
    (
        obj("storage.k8s.io/v1", "CSIDriver", "csi.example.com", spec={"attachRequired": False}),
        "/apis/storage.k8s.io/v1/csidrivers/csi.example.com",
    ),
    (
        obj("gateway.networking.k8s.io/v1", "GatewayClass", "shared", spec={"controllerName": "example.com/gw"}),
        "/apis/gateway.networking.k8s.io/v1/gatewayclasses/shared",
    ),
    (
        obj(
            "flowcontrol.apiserver.k8s.io/v1",
            "FlowSchema",
            "flotilla-test",
            spec={
                "priorityLevelConfiguration": {"name": "global-default"},
                "matchingPrecedence": 9000,
                "distinguisherMethod": {"type": "ByUser"},
                "rules": [
                    {
                        "subjects": [{"kind": "User", "user": {"name": "flotilla-test"}}],
                        "resourceRules": [
                            {"verbs": ["get"], "apiGroups": [""], "resources": ["configmaps"], "namespaces": ["*"]}
                        ],
                    }
                ],
            },
        ),
        "/apis/flowcontrol.apiserver.k8s.io/v1/flowschemas/flotilla-test",
    ),
]


def version_of(cp: ControlPlane, path: str) -> str:
    status, body = get(cp, path)
    assert status == 200, f"GET {path}: {status} {body}"
    return str(body["metadata"]["resourceVersion"])


def past_last_write(cp: ControlPlane, *paths: str) -> bool:
    """The wall clock (second resolution, as managedFields times) is past every entry of these objects."""
    times: list[str] = [
        entry.get("time", "") for path in paths for entry in get(cp, path)[1]["metadata"]["managedFields"]
    ]
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") > max(times)


def settled(cp: ControlPlane) -> bool:
    """The controllers inside the API server have written the status they write once (so versions stay put)."""
    _, policy = get(cp, SIX[1][1])
    _, flows = get(cp, SIX[5][1])
    return bool(policy.get("status", {}).get("observedGeneration") and flows.get("status", {}).get("conditions"))


async def test_the_six_kinds_apply_at_the_paths_the_server_serves_and_a_no_op_is_unchanged(
    cp: ControlPlane, tmp_path: Path
) -> None:
    await install_crds(
        cp,
        stub_crd("cert-manager.io", "ClusterIssuer", "clusterissuers"),
        stub_crd("kyverno.io", "ClusterPolicy", "clusterpolicies"),
        stub_crd("gateway.networking.k8s.io", "GatewayClass", "gatewayclasses"),
    )
    manifests = [manifest for manifest, _ in SIX]
    manifests[0]["metadata"]["namespace"] = "ignored"  # cluster-scoped: a namespace in the manifest means nothing
    async with kube_applier(cp, tmp_path) as applier:
        first = await apply(applier, "six", manifests)
        assert first.state is AppliedState.APPLIED, first.message
        assert [(r.kind, r.namespace, r.result) for r in first.resources] == [
            (m["kind"], "", ApplyResult.CREATED) for m in manifests
        ]
        for _, path in SIX:
            assert get(cp, path)[0] == 200, path
        await eventually("the policy and flow schema statuses are written", lambda: settled(cp))
        # The report says what the server did: unchanged exactly when the resourceVersion did not move. (The
        # first apply in a later second than a status controller's managedFields entry may write once:
        # kube-apiserver sorts the entries by time and its no-op check compares them in order.)
        await eventually("a second has passed since the last write", lambda: past_last_write(cp, *[p for _, p in SIX]))
        versions = [version_of(cp, path) for _, path in SIX]
        again = await apply(applier, "six", manifests)
        moved = [version_of(cp, path) != version for (_, path), version in zip(SIX, versions, strict=True)]
        assert [r.result for r in again.resources] == [
            ApplyResult.CONFIGURED if m else ApplyResult.UNCHANGED for m in moved
        ], again.resources
        versions = [version_of(cp, path) for _, path in SIX]
        same = await apply(applier, "six", manifests)
        assert [r.result for r in same.resources] == [ApplyResult.UNCHANGED] * 6, same.resources
        assert [version_of(cp, path) for _, path in SIX] == versions  # a no-op apply writes nothing
        manifests[0]["spec"]["acme"]["server"] = "https://acme-staging.invalid"
        changed = await apply(applier, "six", manifests)
        assert [r.result for r in changed.resources] == [ApplyResult.CONFIGURED] + [ApplyResult.UNCHANGED] * 5
        assert get(cp, SIX[0][1])[1]["spec"]["acme"]["server"] == "https://acme-staging.invalid"


async def test_a_crd_created_a_moment_ago_is_applied_on_the_next_apply(cp: ControlPlane, tmp_path: Path) -> None:
    widget = obj("widgets.example.com/v1", "Widget", "w1", spec={"size": 3})
    gadget = obj("widgets.example.com/v1", "Gadget", "g1", spec={"size": 1})
    async with kube_applier(cp, tmp_path) as applier:
        before = await apply(applier, "widgets", [widget])  # permanent for this object, not retried forever
        assert before.state is AppliedState.FAILED
        assert "does not serve widgets.example.com/v1" in before.message
        await install_crds(cp, stub_crd("widgets.example.com", "Widget", "widgets", scope="Namespaced"))
        after = await apply(applier, "widgets", [widget])
        assert [(r.namespace, r.result) for r in after.resources] == [("default", ApplyResult.CREATED)]
        assert get(cp, "/apis/widgets.example.com/v1/namespaces/default/widgets/w1")[0] == 200
        # a second kind in a group-version the applier has already cached: one refresh finds it
        await install_crds(cp, stub_crd("widgets.example.com", "Gadget", "gadgets"))
        both = await apply(applier, "widgets", [widget, gadget])
        assert [(r.kind, r.namespace, r.result) for r in both.resources] == [
            ("Widget", "default", ApplyResult.UNCHANGED),
            ("Gadget", "", ApplyResult.CREATED),
        ]
        assert get(cp, "/apis/widgets.example.com/v1/gadgets/g1")[0] == 200
        unknown = await apply(applier, "widgets", [widget, gadget, obj("widgets.example.com/v1", "Gizmo", "z")])
        assert [r.result for r in unknown.resources] == [ApplyResult.UNCHANGED] * 2 + [ApplyResult.FAILED]
        assert unknown.state is AppliedState.FAILED
        assert "serves no kind Gizmo in widgets.example.com/v1" in unknown.message


def web(replicas: int, image: str) -> dict[str, Any]:
    labels = {"app": "web"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "web", "image": image}]}},
        },
    }


def rolled_out(cp: ControlPlane, path: str) -> bool:
    _, deployment = get(cp, path)
    status = deployment.get("status", {})
    return bool(
        status.get("observedGeneration") == deployment["metadata"]["generation"]
        and status.get("updatedReplicas") == status.get("replicas") == status.get("availableReplicas") == 5
    )


async def test_a_second_manager_keeps_spec_replicas_and_fields_nobody_else_owns_are_applied(
    cp: ControlPlane, tmp_path: Path
) -> None:
    namespace = obj("v1", "Namespace", "shop")
    path = "/apis/apps/v1/namespaces/shop/deployments/web"
    async with kube_applier(cp, tmp_path) as applier:
        first = await apply(applier, "shop", [namespace, web(2, "example.invalid/web:1")])
        assert [r.result for r in first.resources] == [ApplyResult.CREATED, ApplyResult.CREATED]
        # an HPA scales through the scale subresource as its own field manager
        await asyncio.to_thread(
            cp.kubectl,
            "patch", "deployment", "web", "-n", "shop", "--subresource=scale", "--type=merge",
            "-p", '{"spec":{"replicas":5}}', "--field-manager=hpa-controller",
        )  # fmt: skip
        again = await apply(applier, "shop", [namespace, web(2, "example.invalid/web:2")])
        assert again.state is AppliedState.APPLIED, again.message
        deployment_report = again.resources[1]
        assert deployment_report.result is ApplyResult.CONFIGURED
        assert ".spec.replicas" in deployment_report.message and "hpa-controller" in deployment_report.message
        assert ".spec.replicas" in again.message
        _, deployment = get(cp, path)
        assert deployment["spec"]["replicas"] == 5  # the other manager keeps its field
        assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "example.invalid/web:2"
        owners = {e["manager"]: e for e in deployment["metadata"]["managedFields"]}
        assert "f:replicas" not in owners["flotilla"]["fieldsV1"].get("f:spec", {})
        assert "f:replicas" in owners["hpa-controller"]["fieldsV1"]["f:spec"]
        # the same manifest again, once the rollout has settled: nothing moves, the report still names the field
        await eventually("the rollout settles", lambda: rolled_out(cp, path))
        await eventually("a second has passed since the last write", lambda: past_last_write(cp, path))
        await apply(applier, "shop", [namespace, web(2, "example.invalid/web:2")])  # may write once (see above)
        version = version_of(cp, path)
        same = await apply(applier, "shop", [namespace, web(2, "example.invalid/web:2")])
        assert same.resources[1].result is ApplyResult.UNCHANGED and ".spec.replicas" in same.resources[1].message
        assert version_of(cp, path) == version and get(cp, path)[1]["spec"]["replicas"] == 5


async def test_prune_deletes_what_the_subscription_no_longer_lists_and_removal_deletes_the_rest(
    cp: ControlPlane, tmp_path: Path
) -> None:
    await asyncio.to_thread(cp.kubectl, "create", "namespace", "prune")
    a = {**obj("v1", "ConfigMap", "a", data={"k": "1"}), "metadata": {"name": "a", "namespace": "prune"}}
    b = obj("rbac.authorization.k8s.io/v1", "ClusterRole", "flotilla-test-b", rules=[])
    a_path, b_path = (
        "/api/v1/namespaces/prune/configmaps/a",
        "/apis/rbac.authorization.k8s.io/v1/clusterroles/flotilla-test-b",
    )
    async with kube_applier(cp, tmp_path) as applier:
        both = await apply(applier, "prune", [a, b])
        assert [r.result for r in both.resources] == [ApplyResult.CREATED, ApplyResult.CREATED]
        only_a = await apply(applier, "prune", [a])
        assert [(r.name, r.result) for r in only_a.resources] == [
            ("a", ApplyResult.UNCHANGED),
            ("flotilla-test-b", ApplyResult.DELETED),
        ]
        assert get(cp, b_path)[0] == 404 and get(cp, a_path)[0] == 200
        removed = await apply(applier, "prune", [], placed=False)
        assert removed.state is AppliedState.REMOVED
        assert [(r.name, r.namespace, r.result) for r in removed.resources] == [("a", "prune", ApplyResult.DELETED)]
        await eventually("ConfigMap a is gone", lambda: get(cp, a_path)[0] == 404)
