"""Drain by the Eviction API (I5): PDB refusals (429) retried with back-off until the timeout.

The node must stay cordoned while it drains, or the scheduler puts evicted pods straight back: before every
round of evictions the drainer asks the driver to hold the cordon (`Cordon`, the driver's own cordon with the
rollout as owner), which cordons again with our mark a node found schedulable and leaves anyone's cordon alone;
a re-cordon is reported as a progress phase and counted in the result.

DaemonSet and mirror pods are skipped; pods without a controller or with emptyDir data are evicted only
when the step's options allow it, otherwise the drain fails naming them (as `kubectl drain` does). At the
timeout the step fails with the blocking pods named; pods are deleted instead only if the plan says so.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from flotilla_contracts.v1.agent import DrainOptions, StepProgress
from flotilla_contracts.v1.common import PodRef
from flotilla_node_agent.agent_metrics import AgentMetrics
from flotilla_node_agent.drivers.base import CordonResult, DrainResult, DriverUnavailable, ProgressCallback, StepFailed

MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
MAX_BACKOFF_S = 30.0
RECORDONED = "re-cordoned: the node was schedulable again"

Cordon = Callable[[], Awaitable[CordonResult]]


def _ref(pod: Any, reason: str = "") -> PodRef:
    return PodRef(namespace=pod.metadata.namespace, name=pod.metadata.name, reason=reason[:4096])


def _owner_kind(pod: Any) -> str:
    for owner in pod.metadata.owner_references or []:
        if owner.controller:
            return str(owner.kind)
    return ""


def _has_empty_dir(pod: Any) -> bool:
    return any(v.empty_dir is not None for v in (pod.spec.volumes or []))


@dataclass
class Drainer:
    core: Any  # CoreV1Api
    node: str
    metrics: AgentMetrics | None = None  # evictions evicted or blocked, on the process's /metrics

    async def _pods(self) -> list[Any]:
        try:
            listing = await self.core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={self.node}")
        except ApiException as exc:
            raise DriverUnavailable(f"listing pods of {self.node}: {exc.status} {exc.reason}") from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DriverUnavailable(f"listing pods of {self.node}: {exc}") from exc
        # Field selectors are a server-side filter some API emulations ignore: filter again here.
        return [
            p
            for p in listing.items
            if p.spec
            and p.spec.node_name == self.node
            and (p.status is None or p.status.phase not in ("Succeeded", "Failed"))
        ]

    def _plan(self, pods: list[Any], options: DrainOptions) -> tuple[list[Any], list[PodRef]]:
        """Split into pods to evict and pods skipped; raise when pods that must not go are present."""
        evict: list[Any] = []
        skipped: list[PodRef] = []
        refused: list[PodRef] = []
        for pod in pods:
            kind = _owner_kind(pod)
            if kind == "DaemonSet":
                skipped.append(_ref(pod, "DaemonSet pod"))
            elif MIRROR_ANNOTATION in (pod.metadata.annotations or {}):
                skipped.append(_ref(pod, "mirror pod"))
            elif not kind and not options.evict_unmanaged_pods:
                refused.append(_ref(pod, "not managed by a controller"))
            elif _has_empty_dir(pod) and not options.delete_emptydir_data:
                refused.append(_ref(pod, "has emptyDir data"))
            else:
                evict.append(pod)
        if refused:
            names = ", ".join(f"{r.namespace}/{r.name} ({r.reason})" for r in refused[:10])
            raise StepFailed("pods_not_evictable", f"the drain options do not allow evicting: {names}", refused)
        return evict, skipped

    async def _evict(self, pod: Any, options: DrainOptions) -> str:
        """'' when evicted (or already gone); the refusal text when a budget refuses (429)."""
        body = client.V1Eviction(
            metadata=client.V1ObjectMeta(name=pod.metadata.name, namespace=pod.metadata.namespace),
            delete_options=client.V1DeleteOptions(grace_period_seconds=options.pod_grace_period_s),
        )
        try:
            await self.core.create_namespaced_pod_eviction(pod.metadata.name, pod.metadata.namespace, body)
        except ApiException as exc:
            if exc.status == 404:
                return ""
            if exc.status == 429:
                return "eviction refused by a PodDisruptionBudget (429)"
            if exc.status == 500 and "disruption budget" in str(exc.body or "").lower():
                return "more than one PodDisruptionBudget covers the pod"
            raise DriverUnavailable(f"evicting {pod.metadata.namespace}/{pod.metadata.name}: {exc.status}") from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DriverUnavailable(f"evicting {pod.metadata.namespace}/{pod.metadata.name}: {exc}") from exc
        return ""

    async def _gone(self, pod: Any) -> bool:
        try:
            now = await self.core.read_namespaced_pod(pod.metadata.name, pod.metadata.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return True
            raise DriverUnavailable(f"reading pod {pod.metadata.name}: {exc.status}") from exc
        return bool(now.metadata.uid and pod.metadata.uid and now.metadata.uid != pod.metadata.uid)

    async def drain(self, options: DrainOptions, progress: ProgressCallback, cordon: Cordon) -> DrainResult:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + options.timeout_s
        recordoned = await self._hold_cordon(cordon, progress)
        evict, skipped = self._plan(await self._pods(), options)
        total = len(evict)
        pending = {(p.metadata.namespace, p.metadata.name): p for p in evict}
        refusals: dict[tuple[str, str], str] = {}
        evicting: dict[tuple[str, str], Any] = {}
        evicted: list[PodRef] = []
        delay = options.eviction_retry_s
        while pending or evicting:
            for key, pod in list(pending.items()):
                refusal = await self._evict(pod, options)
                if self.metrics is not None:
                    self.metrics.eviction(blocked=bool(refusal))
                if refusal:
                    refusals[key] = refusal
                else:
                    evicting[key] = pending.pop(key)
                    refusals.pop(key, None)
            for key, pod in list(evicting.items()):
                if await self._gone(pod):
                    evicted.append(_ref(evicting.pop(key)))
            await progress(
                StepProgress(
                    pods_total=total, pods_evicted=len(evicted), pods_remaining=total - len(evicted), phase="evicting"
                )
            )
            if not pending and not evicting:
                break
            if loop.time() >= deadline:
                return await self._timed_out(options, pending, evicting, refusals, evicted, skipped)
            await asyncio.sleep(min(delay, max(deadline - loop.time(), 0.0)))
            delay = min(delay * 2, MAX_BACKOFF_S) if pending else options.eviction_retry_s
            if pending:
                recordoned += await self._hold_cordon(cordon, progress)
        return DrainResult(evicted=evicted, skipped=skipped, recordoned=recordoned)

    async def _hold_cordon(self, cordon: Cordon, progress: ProgressCallback) -> int:
        """1 when the node was schedulable and is now cordoned again with our mark, else 0."""
        if not (await cordon()).changed:
            return 0
        await progress(StepProgress(phase=RECORDONED))
        return 1

    async def _timed_out(
        self,
        options: DrainOptions,
        pending: dict[tuple[str, str], Any],
        evicting: dict[tuple[str, str], Any],
        refusals: dict[tuple[str, str], str],
        evicted: list[PodRef],
        skipped: list[PodRef],
    ) -> DrainResult:
        blocking = [_ref(p, refusals.get(k, "eviction refused")) for k, p in pending.items()]
        blocking += [_ref(p, "evicted but still terminating") for p in evicting.values()]
        if options.force_delete_on_timeout:
            for pod in [*pending.values(), *evicting.values()]:
                try:
                    await self.core.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace)
                except ApiException as exc:
                    if exc.status != 404:
                        raise DriverUnavailable(f"deleting {pod.metadata.name}: {exc.status}") from exc
                evicted.append(_ref(pod, "deleted at the drain timeout, as the plan allows"))
            return DrainResult(evicted=evicted, skipped=skipped)
        names = ", ".join(f"{r.namespace}/{r.name}" for r in blocking[:10])
        raise StepFailed(
            "drain_timeout",
            f"drain of {self.node} timed out after {options.timeout_s:.0f}s; blocking pods: {names}",
            blocking[:100],
        )
