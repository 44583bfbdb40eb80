"""What the heartbeat cost benchmark checks about the service while it runs: members, health, transitions."""

from __future__ import annotations

import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from flotilla_contracts import subjects
from flotilla_contracts.catalogue import subject_for
from flotilla_contracts.envelope import H_MSG_ID, H_SCHEMA, Reply, schema_id
from flotilla_contracts.subjects import Entity
from flotilla_contracts.v1.heartbeat import (
    FleetHealthReply,
    FleetHealthRequest,
    NodeHealth,
    NodeHealthChanged,
    NodesHealthReply,
    NodesHealthRequest,
)
from flotilla_contracts.v1.registration import ApprovalSource, ClusterIdentity, ClusterInfo, ClusterState
from flotilla_contracts.v1.registration_events import ClusterApproved
from flotilla_runtime import codec

T = TypeVar("T")


async def approve(nc: Client, clusters: list[str]) -> None:
    """Make the clusters members, as registration would (ClusterApproved in FLEET_EVENTS)."""
    js = nc.jetstream()
    now = datetime.now(UTC)
    headers = {H_SCHEMA: schema_id(ClusterApproved)}
    acks = []
    for cluster in clusters:
        identity = ClusterIdentity(uid=cluster, name=cluster.lower(), kubernetes_version="v1.30.4")
        info = ClusterInfo(
            cluster_id=cluster, identity=identity, state=ClusterState.APPROVED, joined_at=now, updated_at=now
        )
        event = ClusterApproved(cluster=info, approved_by=ApprovalSource.ADMIN, occurred_at=now)
        acks.append(
            await js.publish_async(
                subject_for(ClusterApproved, cluster_id=cluster),
                msgspec.json.encode(event),
                headers={**headers, H_MSG_ID: uuid.uuid4().hex},
            )
        )
    for ack in acks:
        await ack


@dataclass
class NodeHealthEvents:
    """Every NodeHealthChanged of one fleet prefix in FLEET_EVENTS, as it is published."""

    prefix: str
    seen: set[tuple[str, str, Any]] = field(default_factory=set)
    changes: list[NodeHealthChanged] = field(default_factory=list)
    sub: Any = None

    async def on_message(self, msg: Msg) -> None:
        event = msgspec.json.decode(msg.data, type=NodeHealthChanged)
        if event.cluster_id.startswith(self.prefix):
            self.seen.add((event.cluster_id, event.node_id, event.to))
            self.changes.append(event)

    async def close(self) -> None:
        await self.sub.unsubscribe()


async def watch_node_health(nc: Client, prefix: str) -> NodeHealthEvents:
    events = NodeHealthEvents(prefix)
    events.sub = await nc.jetstream().subscribe(
        subjects.entity_events(Entity.NODE_HEALTH),
        cb=events.on_message,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.NEW,
        pending_msgs_limit=1_000_000,
    )
    return events


async def health_counts(nc: Client) -> dict[str, int]:
    """Nodes by health, as `flotilla health` asks for them."""
    reply = await nc.request(
        subject_for(FleetHealthRequest),
        codec.encode(FleetHealthRequest(worst=0)),
        timeout=10,
        headers={H_SCHEMA: schema_id(FleetHealthRequest)},
    )
    nodes = data_of(codec.decode_reply(reply.data, FleetHealthReply)).nodes
    return {"ready": nodes.ready, "not_ready": nodes.not_ready, "unreachable": nodes.unreachable, "lost": nodes.lost}


async def node_latencies(nc: Client) -> list[float]:
    """Each Ready node's last heartbeat: received (the service's clock) minus sent_at (the sender's), seconds.

    On one machine the clocks agree, so this is the latency of the node's last heartbeat through nats-server
    and the service's receive path (its `clock_skew_s`)."""
    found: list[float] = []
    cursor = ""
    while True:
        request = NodesHealthRequest(states=[NodeHealth.READY], limit=1000, cursor=cursor)
        reply = await nc.request(
            subject_for(NodesHealthRequest),
            codec.encode(request),
            timeout=10,
            headers={H_SCHEMA: schema_id(NodesHealthRequest)},
        )
        page = data_of(codec.decode_reply(reply.data, NodesHealthReply))
        found += [node.clock_skew_s for node in page.nodes]
        if not page.next_cursor:
            return found
        cursor = page.next_cursor


def data_of(reply: Reply[T]) -> T:
    assert reply.ok and reply.data is not None, reply.error
    return reply.data


def spurious_transitions(
    changes: list[NodeHealthChanged], stopped: dict[str, float], ended_at: float
) -> list[NodeHealthChanged]:
    """Transitions other than first-seen and a stopped node's Unreachable, before the generators ended."""
    return [
        event
        for event in changes
        if event.from_ is not None
        and event.occurred_at.timestamp() < ended_at
        and not (event.to is NodeHealth.UNREACHABLE and f"{event.cluster_id}/{event.node_id}" in stopped)
    ]


def dropped_of(port: int) -> dict[str, float]:
    """The service's drops by reason, from /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
        text = answer.read().decode()
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("flotilla_heartbeats_dropped_total{"):
            labels, _, value = line.partition("} ")
            found[labels.split('"')[1]] = float(value)
    return found
