"""Helpers of the shipped-manifest tests (tests/kube/test_shipped_rbac_*.py, test_overlays_dry_run.py): render
deploy/ with the built kubectl, act as a ServiceAccount with a real token, make minimal CRDs for server-side
dry-run."""

from __future__ import annotations

import json
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from kube_support import BIN, REPO, ControlPlane

DEPLOY = REPO / "deploy"
KUBECTL = BIN / "kubectl"


def render(folder: str) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize deploy/<folder>` renders with the built kubectl."""
    assert KUBECTL.exists(), f"{KUBECTL} is missing: run `make k8s-bins`"
    done = subprocess.run(
        [str(KUBECTL), "kustomize", str(DEPLOY / folder)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"kubectl kustomize deploy/{folder} failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def as_list(objects: list[dict[str, Any]]) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})


def service_account_token(cp: ControlPlane, namespace: str, name: str) -> str:
    """A real, signed token for the ServiceAccount (TokenRequest, as `kubectl create token` asks for one)."""
    token = cp.kubectl("create", "token", name, "-n", namespace, "--duration=1h").strip()
    assert token.count(".") == 2, f"not a JWT: {token[:20]}..."
    return token


def token_kubeconfig(path: Path, server: str, token: str) -> Path:
    """A kubeconfig (JSON) that authenticates with `token`, TLS unchecked (the harness's loopback server)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": server, "insecure-skip-tls-verify": True}}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": "sa"}}],
        "current-context": "local",
    }
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    return path


def _insecure_tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the harness's own certificate, on loopback
    return ctx


def call_as(
    server: str, token: str, method: str, path: str, body: Any = None, content_type: str = "application/json"
) -> tuple[int, Any]:
    """One raw API call with `token`: (HTTP status, decoded body). Errors are returned, not raised."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(server + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    req.add_header("Content-Type", content_type)
    req.add_header("Accept", "application/json")
    try:
        with urllib.request.urlopen(req, context=_insecure_tls(), timeout=30) as resp:
            raw = resp.read()
            status: int = resp.status
    except urllib.error.HTTPError as err:
        raw, status = err.read(), err.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def stub_crd(group: str, version: str, kind: str, plural: str, *, namespaced: bool = True) -> dict[str, Any]:
    """A minimal CustomResourceDefinition that accepts any object of that kind (preserve-unknown-fields)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List"},
            "scope": "Namespaced" if namespaced else "Cluster",
            "versions": [
                {
                    "name": version,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
                }
            ],
        },
    }


def crd_established(cp: ControlPlane, name: str) -> bool:
    crd = cp.get_json("crd", name)
    return any(
        c["type"] == "Established" and c["status"] == "True" for c in crd.get("status", {}).get("conditions", [])
    )


def privileged_allowed(cp: ControlPlane) -> bool:
    """Whether the API server admits privileged containers (`--allow-privileged=true`, kubeadm's setting): a
    server-side dry-run of a Deployment whose pod template has one (validation refuses it otherwise)."""
    labels = {"app": "privileged-probe"}
    container = {"name": "c", "image": "example.invalid/c:1", "securityContext": {"privileged": True}}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "privileged-probe", "namespace": "default"},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
        },
    }
    status, body = cp.request("POST", "/apis/apps/v1/namespaces/default/deployments?dryRun=All", deployment)
    if status == 201:
        return True
    assert status == 422 and "privileged" in str(body), f"unexpected answer to a privileged pod: {status} {body}"
    return False
