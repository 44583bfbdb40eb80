"""Helpers for the node-agent driver tests on a real control plane: per-test kwok nodes, workloads, waits."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from kube_support import KWOK_ANNOTATION, ControlPlane, eventually, node_object

GROUP = "flotilla.test/group"  # each test's own nodes, so tests share one control plane without meeting


async def add_nodes(cp: ControlPlane, group: str, count: int, version: str = "v1.36.0") -> list[str]:
    """`count` kwok worker nodes labelled with `group`, Ready."""
    names = [f"{group}-{i}" for i in range(count)]
    nodes = []
    for name in names:
        node = node_object(name, version)
        node["metadata"]["labels"][GROUP] = group
        nodes.append(node)
    await asyncio.to_thread(cp.apply, *nodes)

    def ready() -> bool:
        items = {n["metadata"]["name"]: n for n in cp.get_json("nodes", "-l", f"{GROUP}={group}")["items"]}
        return all(
            any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in items.get(n, {}).get("status", {}).get("conditions", [])
            )
            for n in names
        )

    await eventually(f"nodes {names} Ready", lambda: asyncio.to_thread(ready))
    assert all(KWOK_ANNOTATION in n["metadata"]["annotations"] for n in nodes)
    return names


def namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def deployment(ns: str, group: str, replicas: int, app: str = "web") -> dict[str, Any]:
    labels = {"app": app}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": app, "namespace": ns},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeSelector": {GROUP: group},
                    "containers": [{"name": app, "image": "example.invalid/web:1"}],
                    "terminationGracePeriodSeconds": 0,
                },
            },
        },
    }


def pdb(ns: str, min_available: int, app: str = "web") -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": app, "namespace": ns},
        "spec": {"minAvailable": min_available, "selector": {"matchLabels": {"app": app}}},
    }


def daemonset(ns: str, group: str, app: str = "agent") -> dict[str, Any]:
    labels = {"app": app}
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": app, "namespace": ns},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeSelector": {GROUP: group},
                    "containers": [{"name": app, "image": "example.invalid/agent:1"}],
                },
            },
        },
    }


def mirror_pod(ns: str, node: str) -> dict[str, Any]:
    """What a kubelet posts for a static pod (here created by the admin): the config.mirror annotation."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"static-{node}",
            "namespace": ns,
            "annotations": {"kubernetes.io/config.mirror": "static-hash"},
        },
        "spec": {"nodeName": node, "containers": [{"name": "static", "image": "example.invalid/static:1"}]},
    }


def pods(cp: ControlPlane, ns: str, selector: str) -> list[dict[str, Any]]:
    """Pods not being deleted, with their node and phase."""
    items: list[dict[str, Any]] = cp.get_json("pods", "-n", ns, "-l", selector)["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def running_on(cp: ControlPlane, ns: str, selector: str) -> dict[str, str]:
    """{pod name: node} of the Running pods."""
    return {
        p["metadata"]["name"]: p["spec"].get("nodeName", "")
        for p in pods(cp, ns, selector)
        if p["status"].get("phase") == "Running"
    }


def node(cp: ControlPlane, name: str) -> dict[str, Any]:
    found: dict[str, Any] = cp.get_json("node", name)
    return found


class Phases:
    """A drain progress callback that records each phase and can act once on the first `evicting` report."""

    def __init__(self, on_first_round: Callable[[], Awaitable[None]] | None = None) -> None:
        self.seen: list[str] = []
        self.on_first_round = on_first_round

    async def __call__(self, progress: Any) -> None:
        self.seen.append(progress.phase)
        if progress.phase == "evicting" and self.on_first_round is not None:
            act, self.on_first_round = self.on_first_round, None
            await act()
