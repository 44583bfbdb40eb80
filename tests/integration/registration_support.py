"""Helpers for registration's cross-process tests: sample joins and reading the event stream."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable
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
from flotilla_testkit import eventually


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
    async with FlotillaClient(url) as client:
        await eventually(
            lambda: client.request(service, "info", InfoRequest(), InfoReply, timeout=0.5),
            f"{service.value} to answer info",
            timeout_s=within_s,
            every_s=0.1,
            retrying=(Exception,),  # no responders or a timeout while it starts
        )


@dataclass
class StreamView:
    """Every event in FLEET_EVENTS: subjects and message ids, to count duplicates and losses."""

    subjects: list[str]
    msg_ids: list[str]

    def __repr__(self) -> str:  # what a failed wait shows: counts, not 10,000 subjects
        return f"StreamView({len(self.subjects)} events, {len(self.duplicated_ids())} duplicated ids)"

    def duplicated_ids(self) -> list[str]:
        return [msg_id for msg_id, n in Counter(self.msg_ids).items() if n > 1]

    def count(self, suffix: str) -> Counter[str]:
        """How many events per cluster id end with `.<suffix>` (cluster events only)."""
        return Counter(
            s.split(".")[4] for s in self.subjects if s.startswith("fleet.v1.evt.cluster.") and s.endswith(suffix)
        )


async def read_stream(
    nc: Client, until: Callable[[StreamView], bool] | None = None, what: str = "", within_s: float = 30.0
) -> StreamView:
    """FLEET_EVENTS as it is now, or, with `until`, once it holds what `until` expects (the outbox relay publishes
    after the reply, so a test waits for the events it needs, then asserts on all of them)."""

    async def view() -> StreamView:
        messages = await fleet_events(nc)
        return StreamView([m.subject for m in messages], [(m.headers or {}).get("Nats-Msg-Id", "") for m in messages])

    if until is None:
        return await view()
    return await eventually(view, what or "FLEET_EVENTS to hold the expected events", timeout_s=within_s, until=until)


def decode(data: bytes) -> dict[str, object]:
    decoded: dict[str, object] = msgspec.json.decode(data)
    return decoded
