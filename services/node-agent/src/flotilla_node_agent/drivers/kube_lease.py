"""Kubernetes side of the cluster agent role: a Lease elects it, a ConfigMap tells the others the id.

The agent holding the `flotilla-cluster-agent` Lease (coordination.k8s.io/v1) joins the fleet and writes
the cluster id into the `flotilla-cluster` ConfigMap; every agent reads the id from there. Taking an
expired lease uses the object's resourceVersion, so two agents cannot both take it (compare-and-set).
On an authenticated bus the cluster credential the join returned goes into the
`flotilla-cluster-credential` Secret, from which every agent of the cluster connects as the cluster.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from flotilla_node_agent.drivers.base import DriverUnavailable

LEASE_NAME = "flotilla-cluster-agent"
CONFIGMAP_NAME = "flotilla-cluster"
CREDENTIAL_SECRET = "flotilla-cluster-credential"


def micro_time(moment: datetime) -> str:
    """A MicroTime as the API server parses it (RFC 3339, always six fraction digits, UTC).

    `datetime.isoformat()` drops the fraction when it is zero, which the server refuses (400)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class KubeLeaderElection:
    """Compare-and-set on one Lease: create it (409: someone else did), or replace it with the resourceVersion
    read (409: someone else wrote first). Either conflict means "not ours this time", never an error."""

    def __init__(
        self,
        api: Any,
        namespace: str,
        identity: str,
        lease_s: int = 30,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.coordination = client.CoordinationV1Api(api)
        self.core = client.CoreV1Api(api)
        self.namespace, self.identity, self.lease_s = namespace, identity, lease_s
        self.clock = clock
        self.trouble = ""  # why the last try could not ask the API server; empty when it could

    def _spec(self, acquired: datetime, now: datetime, transitions: int) -> dict[str, Any]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.lease_s,
            "acquireTime": micro_time(acquired),
            "renewTime": micro_time(now),
            "leaseTransitions": transitions,
        }

    async def try_acquire(self) -> bool:
        """Take or renew the lease; True while we hold it. False when another holds it, when another wrote first,
        and when the API server cannot be asked (`trouble` then says why: a holder that cannot renew steps down)."""
        try:
            held = await self._try_acquire()
        except DriverUnavailable as exc:
            self.trouble = str(exc)
            return False
        self.trouble = ""
        return held

    async def _try_acquire(self) -> bool:
        now = self.clock()
        try:
            lease = await self.coordination.read_namespaced_lease(LEASE_NAME, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise DriverUnavailable(f"reading lease {self.namespace}/{LEASE_NAME}: {exc.status}") from exc
            return await self._write(None, now, now, 0)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DriverUnavailable(f"reading lease {self.namespace}/{LEASE_NAME}: {exc}") from exc
        spec = lease.spec
        renewed = spec.renew_time or spec.acquire_time or now - timedelta(days=1)
        expired = renewed + timedelta(seconds=spec.lease_duration_seconds or self.lease_s) < now
        ours = spec.holder_identity == self.identity
        if not ours and not expired:
            return False
        if ours:  # a renewal: the acquire time and the transitions stay
            return await self._write(lease, spec.acquire_time or now, now, spec.lease_transitions or 0)
        return await self._write(lease, now, now, (spec.lease_transitions or 0) + 1)

    async def _write(self, lease: Any, acquired: datetime, now: datetime, transitions: int) -> bool:
        """Create (lease None) or replace at the resourceVersion read; False on a conflict (409)."""
        metadata: dict[str, Any] = {"name": LEASE_NAME, "namespace": self.namespace}
        if lease is not None:
            metadata["resourceVersion"] = lease.metadata.resource_version
        body: Any = {  # a dict, so MicroTime strings go out exactly as written (see micro_time)
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": self._spec(acquired, now, transitions),
        }
        try:
            if lease is None:
                await self.coordination.create_namespaced_lease(self.namespace, body)
            else:
                await self.coordination.replace_namespaced_lease(LEASE_NAME, self.namespace, body)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise DriverUnavailable(f"writing lease {self.namespace}/{LEASE_NAME}: {exc.status} {exc.reason}") from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DriverUnavailable(f"writing lease {self.namespace}/{LEASE_NAME}: {exc}") from exc
        return True

    async def wait_leadership(self, poll_s: float = 5.0) -> None:
        while True:
            if await self.try_acquire():
                return
            await asyncio.sleep(poll_s)

    async def keep_leadership(self) -> None:
        """Renew every third of the lease; return when it is lost or cannot be renewed (the caller stops the
        role: a holder that cannot prove it holds the lease steps down)."""
        while True:
            await asyncio.sleep(self.lease_s / 3)
            if not await self.try_acquire():
                return

    async def publish_cluster_id(self, cluster_id: str) -> None:
        body = client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name=CONFIGMAP_NAME, namespace=self.namespace), data={"cluster_id": cluster_id}
        )
        try:
            await self.core.create_namespaced_config_map(self.namespace, body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            await self.core.patch_namespaced_config_map(
                CONFIGMAP_NAME, self.namespace, {"data": {"cluster_id": cluster_id}}
            )

    async def read_cluster_id(self) -> str:
        try:
            cm = await self.core.read_namespaced_config_map(CONFIGMAP_NAME, self.namespace)
        except ApiException:
            return ""
        return str((cm.data or {}).get("cluster_id", ""))

    async def cluster_uid(self) -> str:
        """The kube-system namespace UID: a stable identity for the cluster."""
        namespace = await self.core.read_namespace("kube-system")
        return str(namespace.metadata.uid)

    async def publish_credential(self, cluster_id: str, credential: str) -> None:
        """Store the cluster id and credential in the Secret every agent of the cluster reads."""
        # `data` (base64), not `stringData`: what a read returns, whichever API server stored it.
        data = {"cluster_id": _b64(cluster_id), "credential": _b64(credential)}
        body = client.V1Secret(
            metadata=client.V1ObjectMeta(name=CREDENTIAL_SECRET, namespace=self.namespace), type="Opaque", data=data
        )
        try:
            await self.core.create_namespaced_secret(self.namespace, body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            await self.core.patch_namespaced_secret(CREDENTIAL_SECRET, self.namespace, {"data": data})

    async def read_credential(self) -> tuple[str, str] | None:
        """(cluster id, credential) from the Secret, or None while there is none (404)."""
        try:
            secret = await self.core.read_namespaced_secret(CREDENTIAL_SECRET, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        data = {key: base64.b64decode(value).decode() for key, value in (secret.data or {}).items()}
        if not data.get("cluster_id") or not data.get("credential"):
            return None
        return data["cluster_id"], data["credential"]


def _b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()
