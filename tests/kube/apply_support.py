"""Helpers for the applier tests on a real control plane: a ManifestApplier over the API server, commands,
stub CRDs, and condition waits."""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kube_support import ControlPlane, eventually

from flotilla_contracts.v1.scheduler_events import AppliedStatusReported, ApplyManifests
from flotilla_node_agent.applier import ManifestApplier
from flotilla_node_agent.apply_backends import KubernetesApplyBackend
from flotilla_node_agent.drivers.kubernetes import api_client
from flotilla_runtime.logs import get_logger
from flotilla_runtime.migrations import load_migrations
from flotilla_runtime.store import Store

_decisions = itertools.count(1)


@asynccontextmanager
async def kube_applier(cp: ControlPlane, folder: Path) -> AsyncIterator[ManifestApplier]:
    """The cluster agent's applier as it runs in a cluster: a journal in `folder`, server-side apply as the admin."""
    store = await Store.open(folder / "journal.db", load_migrations("flotilla_node_agent", "node-agent"))
    api = await api_client(str(cp.kubeconfig))
    try:
        yield ManifestApplier(None, store, KubernetesApplyBackend(api), get_logger("test-apply"))
    finally:
        await api.close()
        await store.close()


async def apply(
    applier: ManifestApplier, subscription: str, manifests: list[dict[str, Any]], *, placed: bool = True
) -> AppliedStatusReported:
    """One ApplyManifests for `subscription` (a newer decision each time), applied; its report."""
    decision = next(_decisions)
    command = ApplyManifests(
        command_id=f"cmd-{subscription}-{decision}",
        cluster_id="kube",
        subscription=subscription,
        generation=1,
        decision=decision,
        placed=placed,
        manifests=manifests,
        issued_at=datetime.now(UTC),
    )
    report = await applier.apply(command)
    assert report is not None, "a newer decision was skipped as stale"
    return report


def stub_crd(group: str, kind: str, plural: str, *, scope: str = "Cluster", version: str = "v1") -> dict[str, Any]:
    """A minimal CRD that keeps whatever it is given (the real ones validate; the path is what matters here)."""
    meta: dict[str, Any] = {"name": f"{plural}.{group}"}
    if group.endswith((".k8s.io", ".kubernetes.io")):  # protected groups need the approval annotation
        meta["annotations"] = {"api-approved.kubernetes.io": "https://github.com/kubernetes/enhancements/pull/1111"}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": meta,
        "spec": {
            "group": group,
            "scope": scope,
            "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List"},
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


async def install_crds(cp: ControlPlane, *crds: dict[str, Any]) -> None:
    """Create CRDs and wait until each is Established and listed by discovery (what the applier reads)."""
    await asyncio.to_thread(cp.apply, *crds)
    names = [f"crd/{crd['metadata']['name']}" for crd in crds]
    await asyncio.to_thread(cp.kubectl, "wait", "--for=condition=Established", "--timeout=60s", *names)
    for crd in crds:
        spec = crd["spec"]
        path, kind = f"/apis/{spec['group']}/{spec['versions'][0]['name']}", str(spec["names"]["kind"])
        await eventually(f"discovery lists {kind}", functools.partial(served_kind, cp, path, kind))


def served_kind(cp: ControlPlane, path: str, kind: str) -> bool:
    status, body = cp.request("GET", path)
    return status == 200 and any(r.get("kind") == kind for r in body.get("resources", []))


def get(cp: ControlPlane, path: str) -> tuple[int, Any]:
    return cp.request("GET", path)
