"""The node-agent's shipped RBAC (deploy/services/node-agent) on a real API server (issue 16 item 5).

deploy/base and deploy/services/node-agent are rendered with the built kubectl and applied as the admin; then a
real token of the `node-agent` ServiceAccount (TokenRequest) drives the node-agent's own Kubernetes code: node
facts, cordon, drain by eviction (and the force delete a plan may allow), uncordon, the API server probe, the
cluster-agent Lease, ConfigMap and credential Secret, the kube-system UID, and server-side apply and prune of
placed workloads. Everything it needs must be allowed; a sample of what it must not do must answer 403. The
aggregated `flotilla-workload-applier` is widened the documented way (a labelled ClusterRole for a CRD's kind).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kube_support import ControlPlane, control_plane, wait_until
from rbac_support import (
    as_list,
    call_as,
    crd_established,
    privileged_allowed,
    render,
    service_account_token,
    stub_crd,
    token_kubeconfig,
)

from flotilla_contracts.v1.agent import DrainOptions, StepProgress
from flotilla_contracts.v1.heartbeat import ProbeResult
from flotilla_contracts.v1.scheduler_events import ApplyResult
from flotilla_node_agent.apply_backends import ApplyFailed, KubernetesApplyBackend
from flotilla_node_agent.drivers.base import CORDONED_BY_ANNOTATION
from flotilla_node_agent.drivers.kube_lease import CONFIGMAP_NAME, CREDENTIAL_SECRET, LEASE_NAME, KubeLeaderElection
from flotilla_node_agent.drivers.kubernetes import KubernetesDriver, api_client, list_node_facts

pytestmark = pytest.mark.kube

NS = "flotilla"  # where deploy/ puts the node-agent (its Lease, ConfigMap and Secret live there too)
SA = "node-agent"
AS_SA = f"system:serviceaccount:{NS}:{SA}"
WORKLOADS = "shop"  # pods the drain meets
PLACED = "placed"  # a namespace the cluster agent applies itself
NODE = "kwok-worker-1"
APPLIER = "flotilla-workload-applier"


@dataclass
class Shipped:
    cp: ControlPlane
    token: str
    kubeconfig: Path


def applier_rules(cp: ControlPlane) -> set[tuple[str, str]]:
    role = cp.get_json("clusterrole", APPLIER)
    return {(g, r) for rule in role.get("rules") or [] for g in rule["apiGroups"] for r in rule["resources"]}


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shipped]:
    """One control plane for the module, with deploy/base and deploy/services/node-agent applied as rendered."""
    with control_plane(workers=2, kubelet_version="v1.36.0") as cp:
        objects = render("base") + render("services/node-agent")
        assert privileged_allowed(cp), "the node-agent DaemonSet is privileged: run with --allow-privileged=true"
        shipped = as_list(objects)
        cp.kubectl("apply", "--server-side", "-f", "-", stdin=shipped)
        # The aggregated role is filled in by the controller-manager's clusterrole-aggregation controller.
        wait_until(
            "flotilla-workload-applier aggregated",
            lambda: ("apps", "deployments") in applier_rules(cp),
            cp.components,
            60,
        )
        # Applying again (an upgrade of Flotilla) does not fight the controller over the aggregated rules.
        cp.kubectl("apply", "--server-side", "-f", "-", stdin=shipped)
        token = service_account_token(cp, NS, SA)
        path = token_kubeconfig(tmp_path_factory.mktemp("sa") / "node-agent.kubeconfig", cp.server, token)
        yield Shipped(cp, token, path)


@contextlib.asynccontextmanager
async def node_agent_api(shipped: Shipped) -> AsyncIterator[Any]:
    """A kubernetes-asyncio ApiClient loaded the way the node-agent loads one, as the ServiceAccount."""
    api = await api_client(str(shipped.kubeconfig))
    try:
        yield api
    finally:
        await api.close()


async def apply(backend: KubernetesApplyBackend, manifest: dict[str, Any]) -> ApplyResult:
    """What the applier does per object: resolve its scope by discovery, then server-side apply it."""
    ref = await backend.resolve(manifest)
    return (await backend.apply(ref, manifest, "flotilla")).result


async def delete(backend: KubernetesApplyBackend, manifest: dict[str, Any]) -> ApplyResult:
    """What prune does per object."""
    return (await backend.delete(await backend.resolve(manifest))).result


def pinned_deployment(name: str, replicas: int) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": WORKLOADS},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": NODE},
                    "containers": [{"name": name, "image": "example.invalid/app:1"}],
                },
            },
        },
    }


def pods_on_node(cp: ControlPlane) -> list[dict[str, Any]]:
    pods = cp.get_json("pods", "-A", "--field-selector", f"spec.nodeName={NODE}")["items"]
    return [p for p in pods if p["status"].get("phase") == "Running"]


def pdb_blocks(cp: ControlPlane) -> bool:
    status = cp.get_json("pdb", "web", "-n", WORKLOADS).get("status", {})
    return bool(status.get("currentHealthy") == 2 and status.get("disruptionsAllowed") == 0)


def node(cp: ControlPlane, name: str) -> dict[str, Any]:
    found: dict[str, Any] = cp.get_json("node", name)
    return found


async def test_node_driver_cordons_drains_and_uncordons_as_the_service_account(shipped: Shipped) -> None:
    cp = shipped.cp
    cp.kubectl("create", "namespace", WORKLOADS)
    pdb = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": "web", "namespace": WORKLOADS},
        "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}},
    }
    cp.apply(pinned_deployment("api", 2), pinned_deployment("web", 2), pdb)

    def ready() -> bool:
        owners = [p["metadata"]["ownerReferences"][0]["kind"] for p in pods_on_node(cp)]
        return owners.count("ReplicaSet") == 4 and "DaemonSet" in owners  # the node-agent's own pod too

    wait_until(f"4 workload pods and the node-agent pod Running on {NODE}", ready, cp.components, 120)
    wait_until("the web PDB allows no disruption", lambda: pdb_blocks(cp), cp.components, 90)
    before = {p["metadata"]["uid"] for p in pods_on_node(cp) if p["metadata"]["namespace"] == WORKLOADS}

    async with node_agent_api(shipped) as api:
        driver = KubernetesDriver(api, NODE, poll_s=0.2)
        facts = await driver.facts()
        assert facts.node_name == NODE and facts.kubelet_version == "v1.36.0" and not facts.unschedulable
        assert {f.node_name for f in await list_node_facts(api)} == {"kwok-cp-0", "kwok-worker-1", "kwok-worker-2"}

        cordoned = await driver.cordon("rollout-7")  # patch nodes
        assert cordoned.changed
        seen = node(cp, NODE)
        assert seen["spec"]["unschedulable"] is True
        assert seen["metadata"]["annotations"][CORDONED_BY_ANNOTATION] == "rollout-7"

        progress: list[StepProgress] = []

        async def record(step: StepProgress) -> None:
            progress.append(step)

        # api: evicted (pods/eviction create, pods get until gone); web: its PDB refuses (429, which is past
        # authorization) until the timeout, then the plan's force delete (pods delete).
        options = DrainOptions(timeout_s=6, eviction_retry_s=0.5, force_delete_on_timeout=True)
        result = await driver.drain("rollout-7", options, record)
        assert {r.namespace for r in result.evicted} == {WORKLOADS} and len(result.evicted) == 4
        forced = [r for r in result.evicted if "deleted at the drain timeout" in r.reason]
        assert sorted(r.name.rsplit("-", 2)[0] for r in forced) == ["web", "web"]
        assert [r.reason for r in result.skipped] == ["DaemonSet pod"]
        assert progress and progress[-1].pods_total == 4

        uncordoned = await driver.uncordon("rollout-7")  # patch nodes
        assert uncordoned.changed
        assert not node(cp, NODE)["spec"].get("unschedulable")

    def drained() -> bool:
        now = {p["metadata"]["uid"] for p in cp.get_json("pods", "-n", WORKLOADS)["items"]}
        return not (now & before)

    wait_until("the drained pods gone", drained, cp.components, 60)


def test_api_server_probes_and_discovery_are_open_to_the_service_account(shipped: Shipped) -> None:
    """The probes (/livez, /readyz, /version) and discovery come from the bootstrap roles every authenticated
    client has (system:public-info-viewer, system:discovery): rbac.yaml grants no nonResourceURLs."""
    for path in ("/livez", "/readyz", "/version", "/api", "/api/v1", "/apis", "/apis/apps/v1"):
        status, body = call_as(shipped.cp.server, shipped.token, "GET", path)
        assert status == 200, (path, body)
    assert call_as(shipped.cp.server, shipped.token, "GET", "/metrics")[0] == 403  # not everything open


async def test_node_driver_probes_the_api_server_as_the_service_account(shipped: Shipped) -> None:
    async with node_agent_api(shipped) as api:
        health = await KubernetesDriver(api, "kwok-cp-0").api_server()  # /livez, /readyz, /version
    assert health is not None
    assert (health.livez, health.readyz, health.version) == (ProbeResult.OK, ProbeResult.OK, "v1.37.2")


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
