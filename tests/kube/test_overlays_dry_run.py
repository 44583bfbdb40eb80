"""Every folder of deploy/ that renders on its own passes server-side dry-run on a real API server (issue 16
item 5): `kubectl apply --server-side --dry-run=server` with the built kubectl runs the server's defaulting,
validation and admission (Pod Security included) on each object, as a real apply would, and stores nothing.

What a real cluster would have first is made for real first: the custom resource definitions the manifests
rely on (cert-manager's, found in the rendered output by asking discovery which kinds the server lacks; each
stubbed as a CRD that keeps any field) and the namespaces (dry-run does not create them)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from kube_support import ControlPlane, control_plane, wait_until
from rbac_support import DEPLOY, as_list, crd_established, privileged_allowed, render, stub_crd

pytestmark = pytest.mark.kube

# Every folder with a kustomization that renders alone (components/ are only parts of one).
FOLDERS = sorted(
    str(p.parent.relative_to(DEPLOY))
    for p in DEPLOY.rglob("kustomization.yaml")
    if p.parent.relative_to(DEPLOY).parts[0] != "components"
)
# Kinds the manifests may use that a bare API server does not serve: (apiVersion, kind) -> (plural, namespaced).
STUBS = {
    ("cert-manager.io/v1", "Certificate"): ("certificates", True),
    ("cert-manager.io/v1", "Issuer"): ("issuers", True),
    ("cert-manager.io/v1", "ClusterIssuer"): ("clusterissuers", False),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ("servicemonitors", True),
    ("monitoring.coreos.com/v1", "PodMonitor"): ("podmonitors", True),
}


def served_kinds(cp: ControlPlane, api_version: str) -> set[str]:
    path = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    status, body = cp.request("GET", path)
    if status == 404:
        return set()
    assert status == 200, (path, status, body)
    return {r["kind"] for r in body["resources"]}


@pytest.fixture(scope="module")
def cluster() -> Iterator[ControlPlane]:
    """A control plane with the CRDs and namespaces the rendered folders need, made for real."""
    rendered = [o for folder in FOLDERS for o in render(folder)]
    with control_plane(workers=1) as cp:
        used = {(o["apiVersion"], o["kind"]) for o in rendered}
        missing = sorted(k for k in used if k[1] not in served_kinds(cp, k[0]))
        unknown = [k for k in missing if k not in STUBS]
        assert not unknown, f"deploy/ uses kinds this test has no stub CRD for: {unknown}; add them to STUBS"
        crds = []
        for api_version, kind in missing:
            plural, namespaced = STUBS[(api_version, kind)]
            group, version = api_version.split("/")
            crds.append(stub_crd(group, version, kind, plural, namespaced=namespaced))
        if crds:
            cp.apply(*crds)
            names = [crd["metadata"]["name"] for crd in crds]
            wait_until(
                f"CRDs {names} established", lambda: all(crd_established(cp, n) for n in names), cp.components, 60
            )
            wait_until(
                "stubbed kinds in discovery",
                lambda: all(kind in served_kinds(cp, group_version) for group_version, kind in missing),
                cp.components,
                60,
            )
        namespaces = {o["metadata"]["name"] for o in rendered if o["kind"] == "Namespace"}
        namespaces |= {o["metadata"]["namespace"] for o in rendered if o["metadata"].get("namespace")}
        # The Namespace objects as rendered (labels: Pod Security), then any other namespace referred to.
        cp.apply(*[o for o in render("base") if o["kind"] == "Namespace"])
        for name in sorted(namespaces - {"flotilla"}):
            cp.kubectl("create", "namespace", name)
        # As kubeadm runs it (--allow-privileged=true): the node-agent DaemonSet's privileged container is admitted.
        assert privileged_allowed(cp), "the API server refuses privileged containers: start it with --allow-privileged"
        yield cp


def dry_run(cp: ControlPlane, objects: list[dict[str, Any]]) -> tuple[int, str, str]:
    """`kubectl apply --server-side --dry-run=server -f -`: (exit code, stdout, stderr)."""
    done = subprocess.run(
        [
            str(cp.bins / "kubectl"),
            "--kubeconfig",
            str(cp.kubeconfig),
            "apply",
            "--server-side",
            "--dry-run=server",
            "--field-manager=flotilla-deploy-test",
            "--show-managed-fields",
            "-o",
            "json",
            "-f",
            "-",
        ],
        input=as_list(objects).encode(),
        capture_output=True,
        timeout=180,
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def test_every_renderable_folder_is_listed() -> None:
    assert {"base", "envs/dev", "envs/prod", "envs/prod/heartbeat-p0", "envs/prod/heartbeat-p1"} <= set(FOLDERS)
    assert "services/node-agent" in FOLDERS


@pytest.mark.parametrize("folder", FOLDERS)
def test_folder_passes_server_side_dry_run(cluster: ControlPlane, folder: str) -> None:
    cp = cluster
    objects = render(folder)
    code, out, err = dry_run(cp, objects)
    assert code == 0, f"deploy/{folder} refused by the API server:\n{err}"
    answered = json.loads(out)
    items = answered["items"] if answered.get("kind") == "List" else [answered]
    got = sorted((o["kind"], o["metadata"]["name"]) for o in items)
    assert got == sorted((o["kind"], o["metadata"]["name"]) for o in objects)
    for item in items:  # answered by the server (its field manager recorded), not echoed by kubectl
        managers = {m["manager"] for m in item["metadata"].get("managedFields", [])}
        assert "flotilla-deploy-test" in managers, (item["kind"], item["metadata"]["name"])
    stored = cp.kubectl("get", "deployments,statefulsets,daemonsets,jobs", "-A", "-o", "name")
    assert not stored.strip(), f"a dry-run stored objects: {stored}"
