"""deploy/: every env and service folder renders, is valid Kubernetes 1.32, and says what the services need.

Checked against the code, not against itself: settings a pod receives are loaded by the service's own settings
type (an unknown FLOTILLA_<SERVICE>_* variable would stop the pod at start), the NATS configuration is checked
by the nats-server the tests run, and stream names and the heartbeat mapping come from flotilla_contracts.
"""

from __future__ import annotations

import importlib
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
from deploy_support import env_of as pod_env

from flotilla_client import busauth
from flotilla_client.natsserver import find_nats_server
from flotilla_contracts import subjects
from flotilla_contracts.streams import STREAMS
from flotilla_contracts.subjects import Service
from flotilla_runtime.natsconn import redact
from flotilla_runtime.settings import env_prefix, load_settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SERVICES = [s.value for s in Service]
ENVS = sorted(p.name for p in (DEPLOY / "envs").iterdir() if (p / "kustomization.yaml").exists())
Manifest = list[dict[str, Any]]

KUBERNETES_VERSION = "1.32.0"  # the oldest release still in upstream support when this was written
# Custom resources kubernetes-validate has no schema for (it raises SchemaNotFoundError). They are skipped here
# by kind, never silently, and checked field by field against cert-manager's v1 API in test_bus_security_manifests.py.
CUSTOM_KINDS = {("cert-manager.io/v1", "Issuer"), ("cert-manager.io/v1", "Certificate")}
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")
STATEFUL = {"registration", "scheduler", "upgrade-orchestrator"}  # authoritative SQLite: one replica, a volume
FOLDERS = [f"envs/{env}" for env in ENVS] + [f"services/{name}" for name in SERVICES] + ["base"]
Render = Callable[[str], Manifest]


def workloads(objects: Manifest, service: str | None = None) -> list[dict[str, Any]]:
    return [
        o
        for o in objects
        if o["kind"] in WORKLOADS
        and o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "service"
        and (service is None or o["metadata"]["labels"]["app.kubernetes.io/name"] == service)
    ]


def container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, f"{workload['metadata']['name']}: one container per service pod"
    found: dict[str, Any] = containers[0]
    return found


# What `flotilla bus-config secret` puts into the Secret the production overlay reads.
SECRETS = {"flotilla-bus-auth": busauth.secret_values(busauth.new_auth())}


def env_of(c: dict[str, Any], defined: dict[str, str] | None = None) -> dict[str, str]:
    """The container's env as Kubernetes would set it, with SECRETS (deploy_support.env_of)."""
    return pod_env(c, SECRETS, defined)


def config_maps(objects: Manifest) -> dict[str, dict[str, str]]:
    return {o["metadata"]["name"]: o.get("data", {}) for o in objects if o["kind"] == "ConfigMap"}


def by_kind(objects: Manifest, kind: str) -> Iterator[dict[str, Any]]:
    return (o for o in objects if o["kind"] == kind)


@pytest.mark.parametrize("folder", FOLDERS)
def test_renders_and_validates_strictly(render: Render, folder: str) -> None:
    objects = render(folder)
    assert objects, f"{folder} rendered nothing"
    for obj in objects:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
            assert folder == "envs/prod", f"{folder}: {name} needs cert-manager, which only envs/prod requires"
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{folder}: {name} is not valid Kubernetes {KUBERNETES_VERSION}: {exc.message} at {exc.path}")
        if obj["kind"] != "Namespace" and not obj["kind"].startswith("Cluster"):
            assert obj["metadata"].get("namespace") == "flotilla", f"{folder}: {name} is not in namespace flotilla"


def test_every_service_and_env_has_a_folder() -> None:
    assert {p.name for p in (DEPLOY / "services").iterdir()} == set(SERVICES)
    assert {"dev", "prod"} <= set(ENVS)


@pytest.mark.parametrize("service", SERVICES)
def test_service_folder_runs_its_own_image_with_probes_on_its_http_port(render: Render, service: str) -> None:
    objects = render(f"services/{service}")
    [workload] = workloads(objects)
    assert workload["metadata"]["name"] == service
    c = container(workload)
    assert c["image"].split(":")[0] == f"flotilla/{service}"
    prefix = env_prefix(service)
    env = env_of(c)
    port = int(env[f"{prefix}HTTP_PORT"])
    assert env[f"{prefix}HTTP_HOST"] == "0.0.0.0", "probes come from the kubelet, not from localhost"
    named = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/livez")):
        http = c[probe]["httpGet"]
        assert http["path"] == path, f"{service} {probe}"
        assert named.get(http["port"], http["port"]) == port, f"{service} {probe} is not on HTTP_PORT {port}"
    annotations = workload["spec"]["template"]["metadata"]["annotations"]
    assert (annotations["prometheus.io/port"], annotations["prometheus.io/path"]) == (str(port), "/metrics")
    assert "resources" in c and "memory" in c["resources"]["limits"]
    assert workload["spec"]["template"]["spec"]["serviceAccountName"] == service


@pytest.mark.parametrize("service", SERVICES)
def test_settings_given_to_each_pod_are_accepted_by_the_service(render: Render, service: str) -> None:
    """Every FLOTILLA_* value of the pod, through the service's own settings loader and validation."""
    app = importlib.import_module(f"flotilla_{service.replace('-', '_')}.app")
    for env_name in ENVS:
        objects = render(f"envs/{env_name}")
        shared = config_maps(objects)["flotilla-config"]
        for workload in workloads(objects, service):
            environ = {**shared, **env_of(container(workload), shared)}
            settings = load_settings(app.SPEC.settings_type, service, environ)  # raises naming the variable
            if hasattr(app, "validate"):
                app.validate(settings)
            scheme = "tls" if env_name == "prod" else "nats"  # dev (Tilt) runs the open bus
            assert urlsplit(settings.nats_url).scheme == scheme, f"{env_name}: {service} {redact(settings.nats_url)}"
            assert urlsplit(settings.nats_url).hostname == "nats.flotilla.svc"
            assert settings.state_dir.startswith("/var/lib/flotilla")


@pytest.mark.parametrize("service", sorted(STATEFUL))
def test_authoritative_state_is_one_replica_on_a_volume_in_every_env(render: Render, service: str) -> None:
    for folder in [f"services/{service}"] + [f"envs/{e}" for e in ENVS]:
        [workload] = workloads(render(folder), service)
        assert workload["kind"] == "StatefulSet", folder
        assert workload["spec"]["replicas"] == 1, f"{folder}: {service} must run one replica (one SQLite owner)"
        [claim] = workload["spec"]["volumeClaimTemplates"]
        mounts = {m["name"]: m["mountPath"] for m in container(workload)["volumeMounts"]}
        assert mounts[claim["metadata"]["name"]] == env_of(container(workload))[f"{env_prefix(service)}STATE_DIR"]


def test_services_run_as_non_root_with_a_read_only_root_and_no_capabilities(render: Render) -> None:
    for workload in workloads(render("envs/prod")):
        name = workload["metadata"]["name"]
        if name == "node-agent":
            continue  # privileged by design: test_node_agent_has_only_the_host_access_its_executor_needs
        pod = workload["spec"]["template"]["spec"]
        security = container(workload)["securityContext"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert security["readOnlyRootFilesystem"] is True, name
        assert security["allowPrivilegeEscalation"] is False, name
        assert security["capabilities"]["drop"] == ["ALL"], name
        assert not pod.get("hostPID") and not pod.get("hostNetwork"), name


def test_node_agent_has_only_the_host_access_its_executor_needs(render: Render) -> None:
    [daemonset] = workloads(render("services/node-agent"))
    pod = daemonset["spec"]["template"]["spec"]
    env = env_of(container(daemonset))
    assert daemonset["kind"] == "DaemonSet"
    assert pod["tolerations"] == [{"operator": "Exists"}], "every node, control planes included"
    assert pod["hostPID"] is True and env["FLOTILLA_NODE_AGENT_COMMAND_PREFIX"].startswith("nsenter --target 1 ")
    assert not pod.get("hostNetwork") and not pod.get("hostIPC")
    host_paths = [v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v]
    assert host_paths == [env["FLOTILLA_NODE_AGENT_STATE_DIR"]], "the journal is the only host folder mounted"
    assert env["FLOTILLA_NODE_AGENT_NODE_NAME"] == "node-1"  # from spec.nodeName


def rules_of(objects: Manifest, kind: str, name: str | None = None) -> set[tuple[str, str, str, str]]:
    """(apiGroup, resource, verb, resourceName or '') for every rule of every Role/ClusterRole of that kind (and
    that name, when given)."""
    found = set()
    for role in by_kind(objects, kind):
        if name is not None and role["metadata"]["name"] != name:
            continue
        for rule in role.get("rules") or []:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        for resource_name in rule.get("resourceNames", [""]):
                            found.add((group, resource, verb, resource_name))
    return found


APPLIED_KINDS = {
    ("", "configmaps"),
    ("", "services"),
    ("", "serviceaccounts"),
    ("", "persistentvolumeclaims"),
    ("", "namespaces"),
    ("apps", "deployments"),
    ("apps", "statefulsets"),
    ("apps", "daemonsets"),
    ("apps", "replicasets"),
    ("batch", "jobs"),
    ("batch", "cronjobs"),
    ("autoscaling", "horizontalpodautoscalers"),
    ("policy", "poddisruptionbudgets"),
    ("networking.k8s.io", "ingresses"),
    ("networking.k8s.io", "networkpolicies"),
}


def test_rbac_is_least_privilege(render: Render) -> None:
    for service in SERVICES:
        objects = render(f"services/{service}")
        [account] = by_kind(objects, "ServiceAccount")
        if service != "node-agent":
            assert account["automountServiceAccountToken"] is False, f"{service} never calls the Kubernetes API"
            assert not [o for o in objects if o["kind"].endswith(("Role", "RoleBinding"))], service
    objects = render("services/node-agent")
    assert {r["metadata"]["name"] for r in by_kind(objects, "ClusterRole")} == {
        "flotilla-node-agent",
        "flotilla-workload-applier",
        "flotilla-workload-applier-defaults",
    }
    assert rules_of(objects, "ClusterRole", "flotilla-node-agent") == {
        ("", "nodes", "get", ""),
        ("", "nodes", "list", ""),
        ("", "nodes", "patch", ""),
        ("", "pods", "list", ""),
        ("", "pods", "get", ""),
        ("", "pods", "delete", ""),  # only at a drain timeout when the plan allows it (DESIGN I5)
        ("", "pods/eviction", "create", ""),
        ("", "namespaces", "get", "kube-system"),
    }
    assert rules_of(objects, "Role") == {
        ("coordination.k8s.io", "leases", "create", ""),
        ("coordination.k8s.io", "leases", "get", "flotilla-cluster-agent"),
        ("coordination.k8s.io", "leases", "update", "flotilla-cluster-agent"),
        ("", "configmaps", "create", ""),
        ("", "configmaps", "get", "flotilla-cluster"),
        ("", "configmaps", "patch", "flotilla-cluster"),
        ("", "secrets", "create", ""),  # create cannot be limited by name
        ("", "secrets", "get", "flotilla-cluster-credential"),
        ("", "secrets", "patch", "flotilla-cluster-credential"),
    }
    # Placed workloads: get, create, patch (server-side apply) and delete (prune) of the common kinds, nothing else.
    assert rules_of(objects, "ClusterRole", "flotilla-workload-applier-defaults") == {
        (group, resource, verb, "")
        for group, resource in APPLIED_KINDS
        for verb in ("get", "create", "patch", "delete")
    }


def test_workload_applier_is_aggregated_and_bound_to_the_node_agent(render: Render) -> None:
    """Platform teams widen it with their own labelled ClusterRole; ours carries the label the selector matches."""
    objects = render("services/node-agent")
    roles = {r["metadata"]["name"]: r for r in by_kind(objects, "ClusterRole")}
    [selector] = roles["flotilla-workload-applier"]["aggregationRule"]["clusterRoleSelectors"]
    label = "flotilla.dev/aggregate-to-workload-applier"
    assert selector == {"matchLabels": {label: "true"}}
    assert roles["flotilla-workload-applier-defaults"]["metadata"]["labels"][label] == "true"
    assert "rules" not in roles["flotilla-workload-applier"], "the controller-manager owns the aggregated rules"
    bindings = {(b["roleRef"]["name"], b["kind"]): b for b in objects if b["kind"].endswith("RoleBinding")}
    for role, kind in (
        ("flotilla-node-agent", "ClusterRoleBinding"),
        ("flotilla-workload-applier", "ClusterRoleBinding"),
        ("node-agent", "RoleBinding"),
    ):
        assert bindings[(role, kind)]["subjects"] == [
            {"kind": "ServiceAccount", "name": "node-agent", "namespace": "flotilla"}
        ], role


@pytest.mark.parametrize("env", ENVS)
def test_every_service_exports_traces_in_envs(render: Render, env: str) -> None:
    objects = render(f"envs/{env}")
    names = {w["metadata"]["labels"]["app.kubernetes.io/name"] for w in workloads(objects)}
    assert names == set(SERVICES)
    for workload in workloads(objects):
        endpoint = env_of(container(workload)).get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
        assert endpoint.startswith("http://"), f"{env}: {workload['metadata']['name']} exports no traces"
    jaeger = {s["metadata"]["name"]: s for s in by_kind(objects, "Service")}["jaeger"]
    assert 4318 in [p["port"] for p in jaeger["spec"]["ports"]], "OTLP/HTTP (what flotilla_runtime exports)"


def nats_config(objects: Manifest) -> str:
    [conf] = [data["nats.conf"] for name, data in config_maps(objects).items() if name.startswith("nats-config")]
    return conf


@pytest.mark.parametrize("env", ENVS)
def test_nats_is_a_durable_three_node_cluster_with_the_heartbeat_mapping(
    render: Render,
    env: str,
    tmp_path: Path,
    bus_secret: dict[str, str],
    test_tls: Path,
    nats_files: Callable[[Manifest], dict[str, str]],
) -> None:
    objects = render(f"envs/{env}")
    conf = nats_config(objects)
    [nats] = [o for o in by_kind(objects, "StatefulSet") if o["metadata"]["name"] == "nats"]
    routes = re.findall(r"nats://nats-\d+\.nats-headless:6222", conf)
    assert nats["spec"]["replicas"] == 3 == len(routes)
    assert re.search(r"^\s*sync_interval:\s*always\s*$", conf, re.M), "JetStream must fsync every write"
    assert "store_dir" in conf and "jetstream" in conf
    count = int(config_maps(objects)["flotilla-config"]["FLOTILLA_HEARTBEAT_PARTITION_COUNT"])
    for source, destination in (
        subjects.heartbeat_partition_mapping(count),
        subjects.heartbeat_batch_partition_mapping(count),
    ):
        assert f'"{source}": "{destination}"' in conf, "the mapping must split heartbeats into the count heartbeat uses"
    # Every file of the ConfigMap (nats.conf includes the others), certificates where the pod mounts them, and the
    # environment the pod has: an included file missing or a $VARIABLE no Secret key fills fails here.
    for name, text in nats_files(objects).items():
        (tmp_path / name).write_text(text.replace("/etc/nats-tls/", f"{test_tls}/"))
    environ = {"POD_NAME": "nats-0", **(bus_secret if env == "prod" else {})}
    checked = subprocess.run(
        [find_nats_server(), "-t", "-c", str(tmp_path / "nats.conf")],
        capture_output=True,
        text=True,
        timeout=30,
        env=environ,
    )
    assert checked.returncode == 0, f"nats-server rejects the configuration: {checked.stderr}{checked.stdout}"


def test_stream_replicas_job_names_the_contract_streams(render: Render) -> None:
    [job] = [o for o in render("envs/prod") if o["kind"] == "Job"]
    env = env_of(job["spec"]["template"]["spec"]["containers"][0])
    assert env["STREAMS"].split() == [s.name for s in STREAMS]
    assert env["REPLICAS"] == "3"


def test_prod_splits_heartbeat_into_replicated_partitions(render: Render) -> None:
    objects = render("envs/prod")
    count = int(config_maps(objects)["flotilla-config"]["FLOTILLA_HEARTBEAT_PARTITION_COUNT"])
    owned: list[int] = []
    budgets = {
        tuple(sorted(p["spec"]["selector"]["matchLabels"].items())): p for p in by_kind(objects, "PodDisruptionBudget")
    }
    for workload in workloads(objects, "heartbeat"):
        assert workload["spec"]["replicas"] >= 2, "two replicas per partition: hot standby"
        owned += [int(p) for p in env_of(container(workload))["FLOTILLA_HEARTBEAT_PARTITIONS"].split(",")]
        selector = tuple(sorted(workload["spec"]["selector"]["matchLabels"].items()))
        assert selector in budgets, f"{workload['metadata']['name']} is replicated but has no PodDisruptionBudget"
    assert sorted(owned) == list(range(count)), "each partition owned by exactly one Deployment"


def test_prod_pins_image_tags_and_dev_leaves_them_to_tilt(render: Render) -> None:
    for workload in workloads(render("envs/prod")):
        assert ":" in container(workload)["image"], workload["metadata"]["name"]
    for workload in workloads(render("envs/dev")):
        assert ":" not in container(workload)["image"], "Tilt substitutes the images it builds"
