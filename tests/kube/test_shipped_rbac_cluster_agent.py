"""The node-agent's shipped RBAC (deploy/services/node-agent) on a real API server (issue 16 item 5): its cluster
agent, with a real token of the `node-agent` ServiceAccount (TokenRequest), holds the Lease, publishes the cluster's
ConfigMap and credential Secret, reads the kube-system UID, and applies and prunes placed workloads by server-side
apply; a sample of what the ServiceAccount must not do answers 403; the aggregated `flotilla-workload-applier` is
widened the documented way (a labelled ClusterRole for a CRD's kind). The node driver's part:
test_shipped_rbac_node_driver.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from kube_support import wait_until
from rbac_support import call_as, crd_established, stub_crd
from shipped_rbac_support import AS_SA, NS, SA, Shipped, applier_rules, apply, delete, node_agent_api

from flotilla_contracts.v1.scheduler_events import ApplyResult
from flotilla_node_agent.apply_backends import ApplyFailed, KubernetesApplyBackend
from flotilla_node_agent.drivers.kube_lease import CONFIGMAP_NAME, CREDENTIAL_SECRET, LEASE_NAME, KubeLeaderElection

pytestmark = pytest.mark.kube

PLACED = "placed"  # a namespace the cluster agent applies itself


async def test_cluster_agent_lease_configmap_secret_and_identity_as_the_service_account(shipped: Shipped) -> None:
    cp = shipped.cp
    async with node_agent_api(shipped) as api:
        election = KubeLeaderElection(api, NS, "kwok-worker-1")
        assert await election.try_acquire()  # lease get (404) + create
        assert await election.try_acquire()  # get + update (renew)
        other = KubeLeaderElection(api, NS, "kwok-worker-2")
        assert not await other.try_acquire()
        assert other.trouble == "", other.trouble  # not held because it is held, not because of a 403
        await election.publish_cluster_id("c-1")  # configmap create
        await election.publish_cluster_id("c-2")  # 409, then patch
        assert await election.read_cluster_id() == "c-2"
        assert await election.read_credential() is None  # get: 404, not 403
        await election.publish_credential("c-2", "cred-1")  # secret create
        await election.publish_credential("c-2", "cred-2")  # 409, then patch
        assert await election.read_credential() == ("c-2", "cred-2")
        assert await election.cluster_uid() == cp.get_json("namespace", "kube-system")["metadata"]["uid"]
    lease = cp.get_json("lease", LEASE_NAME, "-n", NS)
    assert lease["spec"]["holderIdentity"] == "kwok-worker-1"
    assert cp.get_json("configmap", CONFIGMAP_NAME, "-n", NS)["data"] == {"cluster_id": "c-2"}
    assert set(cp.get_json("secret", CREDENTIAL_SECRET, "-n", NS)["data"]) == {"cluster_id", "credential"}


def placed_objects() -> list[dict[str, Any]]:
    labels = {"app": "placed-web"}
    meta = {"namespace": PLACED, "labels": labels}
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": PLACED}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web-config", **meta}, "data": {"a": "1"}},
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", **meta},
            "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8080}]},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", **meta},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "web", "image": "example.invalid/web:1"}]},
                },
            },
        },
    ]


async def test_cluster_agent_applies_and_prunes_placed_workloads_as_the_service_account(shipped: Shipped) -> None:
    cp = shipped.cp
    objects = placed_objects()
    async with node_agent_api(shipped) as api:
        backend = KubernetesApplyBackend(api)
        for manifest in objects:  # get (404) + server-side apply patch, which creates: create is checked too
            assert await apply(backend, manifest) == ApplyResult.CREATED, manifest["kind"]
        for manifest in objects:  # get (found) + patch of an existing object
            again = await apply(backend, manifest)
            assert again in (ApplyResult.UNCHANGED, ApplyResult.CONFIGURED), manifest["kind"]
        assert cp.get_json("deployment", "web", "-n", PLACED)["metadata"]["labels"] == {"app": "placed-web"}
        for manifest in reversed(objects):  # prune
            assert await delete(backend, manifest) == ApplyResult.DELETED, manifest["kind"]
    for kind, name in (("deployment", "web"), ("service", "web"), ("configmap", "web-config")):
        assert not cp.kubectl("get", kind, name, "-n", PLACED, "--ignore-not-found", "-o", "name").strip()
    phase = cp.kubectl("get", "namespace", PLACED, "--ignore-not-found", "-o", "jsonpath={.status.phase}")
    assert phase in ("", "Terminating")


async def test_what_the_node_agent_must_not_do_is_refused(shipped: Shipped) -> None:
    cp, token = shipped.cp, shipped.token
    cp.kubectl("create", "namespace", "denials")
    cp.kubectl("create", "secret", "generic", "admin-secret", "-n", "kube-system", "--from-literal=k=v")
    cp.kubectl("create", "secret", "generic", "node-agent", "-n", NS, "--from-literal=FLOTILLA_NODE_AGENT_JOIN_TOKEN=t")
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "other", "namespace": NS}}
    cp.apply(lease)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "denials"},
        "spec": {"containers": [{"name": "c", "image": "example.invalid/c:1"}]},
    }
    cp.apply(pod)
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "node-agent-is-admin"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": SA, "namespace": NS}],
    }
    merge = "application/merge-patch+json"
    denied: list[tuple[str, str, Any, str]] = [
        ("DELETE", "/api/v1/nodes/kwok-worker-2", None, "application/json"),
        ("GET", "/api/v1/namespaces/kube-system/secrets/admin-secret", None, "application/json"),
        ("GET", "/api/v1/namespaces/kube-system/secrets", None, "application/json"),
        ("GET", f"/api/v1/namespaces/{NS}/secrets/node-agent", None, "application/json"),  # its join token
        ("GET", f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/other", None, "application/json"),
        ("PATCH", f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/other", {"spec": {}}, merge),
        ("DELETE", f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/{LEASE_NAME}", None, "application/json"),
        ("PATCH", f"/api/v1/namespaces/{NS}/secrets/node-agent", {"data": {}}, merge),
        ("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", binding, "application/json"),
        ("POST", "/api/v1/namespaces/denials/pods", pod, "application/json"),
        ("POST", "/api/v1/namespaces/denials/pods/p/exec?command=sh&stdout=true", None, "application/json"),
        ("PATCH", "/api/v1/nodes/kwok-worker-2/status", {"status": {}}, merge),
        ("GET", "/api/v1/persistentvolumes", None, "application/json"),
    ]
    answers = {
        f"{method} {path}": call_as(cp.server, token, method, path, body, content_type)[0]
        for method, path, body, content_type in denied
    }
    assert answers == {key: 403 for key in answers}
    # The token is the ServiceAccount's, and it does reach the server: what it may do answers 200.
    status, review = call_as(cp.server, token, "GET", "/api/v1/nodes/kwok-worker-2")
    assert status == 200, review

    # Through the product's own applier: kinds outside the applier's defaults are refused.
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "r", "namespace": "denials"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}],
    }
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "denials"}}
    async with node_agent_api(shipped) as api:
        backend = KubernetesApplyBackend(api)
        for manifest in (role, secret, binding, pod):
            with pytest.raises(ApplyFailed, match="403"):
                await apply(backend, manifest)
    assert not cp.kubectl("get", "clusterrolebinding", "node-agent-is-admin", "--ignore-not-found").strip()

    # `kubectl auth can-i` agrees (a complement to the real calls above).
    def can(*args: str) -> str:
        return cp.kubectl("auth", "can-i", *args, f"--as={AS_SA}", check=False).strip()

    assert can("create", "deployments.apps", "-n", "denials") == "yes"
    assert can("create", "pods", "--subresource=eviction", "-n", "denials") == "yes"
    assert can("get", "secrets", "-n", "kube-system") == "no"
    assert can("create", "pods", "--subresource=exec", "-n", "denials") == "no"
    assert can("create", "pods", "-n", "denials") == "no"
    assert can("bind", "clusterroles") == "no"
    assert can("escalate", "clusterroles") == "no"
    assert can("impersonate", "users") == "no"


async def test_a_platform_team_widens_the_applier_with_an_aggregated_cluster_role(shipped: Shipped) -> None:
    cp = shipped.cp
    cp.apply(stub_crd("example.com", "v1", "Widget", "widgets"))
    wait_until("the Widget CRD established", lambda: crd_established(cp, "widgets.example.com"), cp.components, 60)
    cp.kubectl("create", "namespace", "widgets")
    widget = {
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "metadata": {"name": "w", "namespace": "widgets"},
        "spec": {"size": 3},
    }
    async with node_agent_api(shipped) as api:
        backend = KubernetesApplyBackend(api)
        with pytest.raises(ApplyFailed, match="403"):
            await apply(backend, widget)
        # What docs/security.md tells a platform team to apply: no edit of the shipped roles.
        cp.apply(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {
                    "name": "flotilla-workload-applier-widgets",
                    "labels": {"flotilla.dev/aggregate-to-workload-applier": "true"},
                },
                "rules": [
                    {
                        "apiGroups": ["example.com"],
                        "resources": ["widgets"],
                        "verbs": ["get", "create", "patch", "delete"],
                    }
                ],
            }
        )

        def allowed() -> bool:
            answer = cp.kubectl(
                "auth", "can-i", "patch", "widgets.example.com", "-n", "widgets", f"--as={AS_SA}", check=False
            )
            return ("example.com", "widgets") in applier_rules(cp) and answer.strip() == "yes"

        wait_until("widgets aggregated into flotilla-workload-applier", allowed, cp.components, 60)
        assert await apply(backend, widget) == ApplyResult.CREATED
        assert cp.get_json("widget", "w", "-n", "widgets")["spec"] == {"size": 3}
        assert await delete(backend, widget) == ApplyResult.DELETED
