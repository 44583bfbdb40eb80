"""What `flotilla demo --kubernetes` places on its clusters, and how it tells the workload runs."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from flotilla_client.kubeworld.processes import bin_dir

# A Deployment of 3 with a budget of 2: each drain must wait for a replacement elsewhere before the next eviction.
WEB_SUBSCRIPTION = """\
name: web
description: a Deployment with a PodDisruptionBudget on every kube cluster
policy: {selector: env=kube, strategy: Replicate}
---
{apiVersion: v1, kind: Namespace, metadata: {name: web}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: registry.example/web:1}]}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: web, namespace: web}
spec: {minAvailable: 2, selector: {matchLabels: {app: web}}}
"""


def kubectl_json(kubeconfig: str, *args: str) -> Any:
    """`kubectl get -o json ...` with the built kubectl; raises CalledProcessError with kubectl's message."""
    out = subprocess.run(
        [str(bin_dir() / "kubectl"), "--kubeconfig", kubeconfig, "get", "-o", "json", *args],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return json.loads(out.stdout)


def web_settled(kubeconfig: str) -> bool:
    """3 web pods Running (none terminating) and the budget allows exactly one disruption."""
    try:
        pods = kubectl_json(kubeconfig, "pods", "-n", "web", "-l", "app=web")["items"]
        pdb = kubectl_json(kubeconfig, "pdb", "web", "-n", "web").get("status", {})
    except subprocess.CalledProcessError:
        return False  # not applied yet
    running = [p for p in pods if p["status"].get("phase") == "Running" and "deletionTimestamp" not in p["metadata"]]
    return len(running) == 3 and pdb.get("disruptionsAllowed") == 1
