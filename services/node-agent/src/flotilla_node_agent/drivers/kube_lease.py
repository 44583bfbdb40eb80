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
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

LEASE_NAME = "flotilla-cluster-agent"
CONFIGMAP_NAME = "flotilla-cluster"
CREDENTIAL_SECRET = "flotilla-cluster-credential"


class KubeLeaderElection:
    def __init__(self, api: Any, namespace: str, identity: str, lease_s: int = 30) -> None:
        self.coordination = client.CoordinationV1Api(api)
        self.core = client.CoreV1Api(api)
        self.namespace, self.identity, self.lease_s = namespace, identity, lease_s

    def _spec(self, now: datetime, transitions: int) -> Any:
        return client.V1LeaseSpec(
            holder_identity=self.identity,
            lease_duration_seconds=self.lease_s,
            acquire_time=now,
            renew_time=now,
            lease_transitions=transitions,
        )

    async def try_acquire(self) -> bool:
        """Take or renew the lease; True while we hold it."""
        now = datetime.now(UTC)
        try:
            lease = await self.coordination.read_namespaced_lease(LEASE_NAME, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                return False
            body = client.V1Lease(
                metadata=client.V1ObjectMeta(name=LEASE_NAME, namespace=self.namespace), spec=self._spec(now, 0)
            )
            try:
                await self.coordination.create_namespaced_lease(self.namespace, body)
                return True
            except ApiException:
                return False
        spec = lease.spec
        renewed = spec.renew_time or spec.acquire_time or now - timedelta(days=1)
        expired = renewed + timedelta(seconds=spec.lease_duration_seconds or self.lease_s) < now
        if spec.holder_identity != self.identity and not expired:
            return False
        transitions = (spec.lease_transitions or 0) + (spec.holder_identity != self.identity)
        lease.spec = self._spec(now, transitions)
        try:
            await self.coordination.replace_namespaced_lease(
                LEASE_NAME, self.namespace, lease
            )  # CAS on resourceVersion
        except ApiException:
            return False
        return True

    async def wait_leadership(self, poll_s: float = 5.0) -> None:
        while True:
            if await self.try_acquire():
                return
            await asyncio.sleep(poll_s)

    async def keep_leadership(self) -> None:
        """Renew every third of the lease; return when it is lost (the caller stops the role)."""
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                held = await self.try_acquire()
            except (aiohttp.ClientError, TimeoutError):
                held = False
            if not held:
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
