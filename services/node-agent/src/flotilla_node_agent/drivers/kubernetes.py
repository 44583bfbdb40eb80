"""The Kubernetes driver (kubernetes-asyncio): node facts, cordon/uncordon by patch, drain, verify.

Cordon patches `spec.unschedulable` and annotates the node with the rollout that cordoned it; uncordon
undoes only such cordons (I9). The upgrade itself runs on the host through the configured executor.
Library exceptions never leave this package: API trouble becomes DriverUnavailable (retry later) or
StepFailed (the step failed, with the reason).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from flotilla_contracts.ids import node_token
from flotilla_contracts.v1.agent import DrainOptions, KubeadmAction, NodeFacts, TargetVersions
from flotilla_contracts.v1.common import (
    KUBE_VERSION_PATTERN,
    ConditionStatus,
    NodeCondition,
    NodeConditionType,
    NodeRole,
    Resources,
)
from flotilla_contracts.v1.heartbeat import ApiServerHealth, ProbeResult
from flotilla_node_agent.agent_metrics import AgentMetrics
from flotilla_node_agent.drivers.base import (
    CORDONED_BY_ANNOTATION,
    CordonResult,
    DrainResult,
    DriverUnavailable,
    ProgressCallback,
    StepFailed,
    UncordonResult,
)
from flotilla_node_agent.drivers.kube_drain import Drainer
from flotilla_node_agent.executors.base import Executor, ExecutorError, plain

MERGE_PATCH = "application/merge-patch+json"
PROBE_TIMEOUT_S = 5.0
PATCH_ATTEMPTS = 5  # a node's status moves every few seconds; a conflict is read again and retried
CONTROL_PLANE_LABELS = ("node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/master")
_KNOWN_CONDITIONS = {c.value for c in NodeConditionType} - {"Flapping", "ClockSkew"}


async def api_client(kubeconfig: str = "") -> Any:
    """In-cluster configuration when running in a pod, else the kubeconfig file (or the default one)."""
    if not kubeconfig:
        try:
            load_incluster: Any = config.load_incluster_config
            load_incluster()
            return client.ApiClient()
        except config.ConfigException:
            pass
    configuration = client.Configuration()
    await config.load_kube_config(config_file=kubeconfig or None, client_configuration=configuration)
    return client.ApiClient(configuration)


def _quantity(text: str | None, scale: int = 1) -> int:
    """Enough of Kubernetes quantities for capacity reports: plain, m, Ki/Mi/Gi/Ti, k/M/G."""
    if not text:
        return 0
    suffixes = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "k": 10**3, "M": 10**6, "G": 10**9}
    for suffix, factor in suffixes.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    if text.endswith("m"):
        return int(float(text[:-1]) * scale / 1000)
    return int(float(text) * scale)


def _resources(values: dict[str, str] | None) -> Resources:
    values = values or {}
    return Resources(
        cpu_millis=_quantity(values.get("cpu"), 1000),
        memory_bytes=_quantity(values.get("memory")),
        ephemeral_storage_bytes=_quantity(values.get("ephemeral-storage")),
        pods=_quantity(values.get("pods")),
    )


def _role(labels: dict[str, str]) -> NodeRole:
    return NodeRole.CONTROL_PLANE if any(k in labels for k in CONTROL_PLANE_LABELS) else NodeRole.WORKER


def _ready(node: Any) -> bool:
    for condition in (node.status and node.status.conditions) or []:
        if condition.type == "Ready":
            return bool(condition.status == "True")
    return False


# kubeadm's static pods carry `component: kube-apiserver`; the image tag is the API server version on that node.
API_SERVER_SELECTOR = "component=kube-apiserver"
_VERSION_TAG = re.compile(KUBE_VERSION_PATTERN)


def api_server_versions(pods: list[Any]) -> dict[str, str]:
    """Node name -> the version of the kube-apiserver static pod on it (its image tag), for kubeadm clusters.

    Nodes without such a pod (another distribution, or kwok) are absent: their API server version is unknown,
    and registration falls back to the control plane's kubelet."""
    versions: dict[str, str] = {}
    for pod in pods:
        node = pod.spec.node_name if pod.spec else None
        containers = (pod.spec.containers or []) if pod.spec else []
        image = next((c.image for c in containers if c.name == "kube-apiserver"), None)
        tag = image.rpartition(":")[2].split("@")[0] if image and ":" in image else ""
        if node and _VERSION_TAG.match(tag):
            versions[node] = tag if tag.startswith("v") else f"v{tag}"
    return versions


async def read_api_server_versions(core: Any) -> dict[str, str]:
    """`api_server_versions` of kube-system's API server pods; empty when they cannot be read."""
    try:
        pods = await core.list_namespaced_pod("kube-system", label_selector=API_SERVER_SELECTOR)
    except (ApiException, aiohttp.ClientError, TimeoutError):
        return {}
    return api_server_versions(list(pods.items))


def node_facts(node: Any, api_server_version: str | None = None) -> NodeFacts:
    """NodeFacts from a V1Node (and, for a control-plane node, the version of its API server when known)."""
    name = node.metadata.name
    labels = dict(node.metadata.labels or {})
    info = node.status.node_info if node.status else None
    conditions = [
        NodeCondition(
            type=NodeConditionType(c.type),
            status=ConditionStatus(c.status),
            reason=(c.reason or "")[:256],
            message=(c.message or "")[:4096],
        )
        for c in ((node.status and node.status.conditions) or [])
        if c.type in _KNOWN_CONDITIONS and c.status in ("True", "False", "Unknown")
    ]
    return NodeFacts(
        node_id=node_token(name),
        node_name=name,
        role=_role(labels),
        kubelet_version=info.kubelet_version if info else "v0.0.0",
        kube_proxy_version=(info.kube_proxy_version or None) if info else None,
        os_image=(info.os_image or "") if info else "",
        kernel_version=(info.kernel_version or "") if info else "",
        container_runtime=(info.container_runtime_version or "") if info else "",
        architecture=(info.architecture or "") if info else "",
        labels=dict(list(labels.items())[:256]),
        unschedulable=bool(node.spec and node.spec.unschedulable),
        capacity=_resources(node.status.capacity if node.status else None),
        allocatable=_resources(node.status.allocatable if node.status else None),
        conditions=conditions,
        api_server_version=api_server_version if _role(labels) is NodeRole.CONTROL_PLANE else None,
    )


async def list_node_facts(api: Any) -> list[NodeFacts]:
    """Facts of every node of the cluster (the cluster agent's report)."""
    try:
        nodes = await client.CoreV1Api(api).list_node()
    except ApiException as exc:
        raise DriverUnavailable(f"listing nodes: {exc.status} {exc.reason}") from exc
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise DriverUnavailable(f"listing nodes: {exc}") from exc
    versions = await read_api_server_versions(client.CoreV1Api(api))
    return [node_facts(node, versions.get(node.metadata.name)) for node in nodes.items]


@dataclass
class KubernetesDriver:
    """One node through the Kubernetes API; `api` is a kubernetes-asyncio ApiClient."""

    api: Any
    name: str
    executor: Executor | None = None
    poll_s: float = 2.0
    metrics: AgentMetrics | None = None  # the process's figures (evictions)

    def __post_init__(self) -> None:
        self.core = client.CoreV1Api(self.api)
        self.drainer = Drainer(self.core, self.name, self.metrics)

    @property
    def node_name(self) -> str:
        return self.name

    async def _node(self) -> Any:
        try:
            return await self.core.read_node(self.name)
        except ApiException as exc:
            if exc.status == 404:
                raise StepFailed("node_not_found", f"node {self.name} is not in the cluster") from exc
            raise DriverUnavailable(f"reading node {self.name}: {exc.status} {exc.reason}") from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DriverUnavailable(f"reading node {self.name}: {exc}") from exc

    async def _patch(self, node: Any, body: dict[str, Any]) -> bool:
        """Merge-patch the node as it was read: False when it changed since (409), so the caller reads again.

        The read's resourceVersion rides in the patch as a precondition, so a cordon by someone else between
        our read and our write is never overwritten with our mark (I9)."""
        body = {**body, "metadata": {**body.get("metadata", {}), "resourceVersion": node.metadata.resource_version}}
        try:
            patch_node: Any = self.core.patch_node  # `_content_type` is outside the generated signature
            await patch_node(self.name, body, _content_type=MERGE_PATCH)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise DriverUnavailable(f"patching node {self.name}: {exc.status} {exc.reason}") from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DriverUnavailable(f"patching node {self.name}: {exc}") from exc
        return True

    async def facts(self) -> NodeFacts:
        node = await self._node()
        if _role(dict(node.metadata.labels or {})) is not NodeRole.CONTROL_PLANE:
            return node_facts(node)
        return node_facts(node, (await read_api_server_versions(self.core)).get(self.name))

    async def cordon(self, owner: str) -> CordonResult:
        for _ in range(PATCH_ATTEMPTS):
            node = await self._node()
            annotations = node.metadata.annotations or {}
            if node.spec and node.spec.unschedulable:
                return CordonResult(was_cordoned=not annotations.get(CORDONED_BY_ANNOTATION), changed=False)
            mark = {"metadata": {"annotations": {CORDONED_BY_ANNOTATION: owner}}, "spec": {"unschedulable": True}}
            if await self._patch(node, mark):
                return CordonResult(was_cordoned=False, changed=True)
        raise DriverUnavailable(f"node {self.name} kept changing under {PATCH_ATTEMPTS} cordon attempts")

    async def uncordon(self, owner: str) -> UncordonResult:
        for _ in range(PATCH_ATTEMPTS):
            node = await self._node()
            annotations = node.metadata.annotations or {}
            if not (node.spec and node.spec.unschedulable):
                return UncordonResult(changed=False, message="node is already schedulable")
            if annotations.get(CORDONED_BY_ANNOTATION) != owner:
                who = annotations.get(CORDONED_BY_ANNOTATION) or "someone else"
                return UncordonResult(changed=False, message=f"node was cordoned by {who}; left cordoned (I9)")
            unmark = {"metadata": {"annotations": {CORDONED_BY_ANNOTATION: None}}, "spec": {"unschedulable": False}}
            if await self._patch(node, unmark):
                return UncordonResult(changed=True)
        raise DriverUnavailable(f"node {self.name} kept changing under {PATCH_ATTEMPTS} uncordon attempts")

    async def drain(self, owner: str, options: DrainOptions, progress: ProgressCallback) -> DrainResult:
        async def hold() -> CordonResult:
            return await self.cordon(owner)

        return await self.drainer.drain(options, progress, hold)

    async def upgrade(self, target: TargetVersions, action: KubeadmAction | None) -> None:
        if self.executor is None:
            raise StepFailed("no_executor", "no upgrade executor is configured (FLOTILLA_NODE_AGENT_EXECUTOR)")
        facts = await self.facts()
        try:
            await self.executor.upgrade(target, action, facts.role)
        except ExecutorError as exc:
            raise StepFailed("upgrade_failed", str(exc)) from exc

    async def verify(self, target: TargetVersions, timeout_s: float) -> str:
        want = plain(target.kubelet_version or target.kubernetes_version)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        seen = ""
        while True:
            node = await self._node()
            seen = node.status.node_info.kubelet_version if node.status and node.status.node_info else ""
            if _ready(node) and plain(seen) == want:
                return str(seen)
            if loop.time() >= deadline:
                state = "Ready" if _ready(node) else "not Ready"
                raise StepFailed(
                    "verify_timeout", f"node {self.name} is {state} at {seen or '?'}; want Ready at v{want}"
                )
            await asyncio.sleep(min(self.poll_s, max(deadline - loop.time(), 0.01)))

    async def api_server(self) -> ApiServerHealth | None:
        """Probe /livez and /readyz through the API client (the local API server on a control plane)."""
        facts_role = _role(dict((await self._node()).metadata.labels or {}))
        if facts_role is not NodeRole.CONTROL_PLANE:
            return None
        results: list[ProbeResult] = []
        for path in ("/livez", "/readyz"):
            try:
                await self.api.call_api(
                    path,
                    "GET",
                    auth_settings=["BearerToken"],
                    response_types_map={200: "str"},
                    _return_http_data_only=True,
                    _request_timeout=PROBE_TIMEOUT_S,
                )
                results.append(ProbeResult.OK)
            except ApiException:
                results.append(ProbeResult.FAILED)
            except (aiohttp.ClientError, TimeoutError):
                results.append(ProbeResult.UNREACHABLE)
        try:
            version = str((await client.VersionApi(self.api).get_code()).git_version)
        except (ApiException, aiohttp.ClientError, TimeoutError):
            version = None
        return ApiServerHealth(livez=results[0], readyz=results[1], version=version)

    async def close(self) -> None:
        await self.api.close()
