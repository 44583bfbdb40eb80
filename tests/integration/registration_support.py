"""Helpers for registration's cross-process tests: sample joins and reading the event stream."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from dataclasses import dataclass

import msgspec
from integration_support import fleet_events
from nats.aio.client import Client

from flotilla_client.client import FlotillaClient
from flotilla_contracts.subjects import Service
from flotilla_contracts.v1.agent import NodeFacts
from flotilla_contracts.v1.common import NodeRole
from flotilla_contracts.v1.registration import ClusterIdentity, JoinRequest
from flotilla_contracts.v1.service import InfoReply, InfoRequest


def join_request(token: str, name: str, nodes: int = 5, request_id: str | None = None) -> JoinRequest:
    return JoinRequest(
        request_id=request_id or uuid.uuid4().hex,
        token=token,
        identity=ClusterIdentity(uid=f"uid-{name}", name=name, kubernetes_version="v1.29.6", labels={"env": "test"}),
        nodes=[
            NodeFacts(
                node_id=f"{name}-n{i}",
                node_name=f"{name}-n{i}",
                role=NodeRole.CONTROL_PLANE if i == 0 else NodeRole.WORKER,
                kubelet_version="v1.29.6",
            )
            for i in range(nodes)
        ],
    )


async def wait_until_serving(url: str, service: Service, within_s: float = 20.0) -> None:
    """Until the service answers its `info` command."""
    deadline = asyncio.get_running_loop().time() + within_s
    async with FlotillaClient(url) as client:
        while True:
            try:
                await client.request(service, "info", InfoRequest(), InfoReply, timeout=0.5)
                return
            except Exception:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.1)


@dataclass
class StreamView:
    """Every event in FLEET_EVENTS: subjects and message ids, to count duplicates and losses."""

    subjects: list[str]
    msg_ids: list[str]

    def duplicated_ids(self) -> list[str]:
        return [msg_id for msg_id, n in Counter(self.msg_ids).items() if n > 1]

    def count(self, suffix: str) -> Counter[str]:
        """How many events per cluster id end with `.<suffix>` (cluster events only)."""
        return Counter(
            s.split(".")[4] for s in self.subjects if s.startswith("fleet.v1.evt.cluster.") and s.endswith(suffix)
        )


async def read_stream(nc: Client, settle_s: float = 0.0) -> StreamView:
    await asyncio.sleep(settle_s)
    messages = await fleet_events(nc)
    return StreamView([m.subject for m in messages], [(m.headers or {}).get("Nats-Msg-Id", "") for m in messages])


def decode(data: bytes) -> dict[str, object]:
    decoded: dict[str, object] = msgspec.json.decode(data)
    return decoded
