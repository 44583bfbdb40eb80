"""JetStream streams and consumer naming, as plain definitions the runtime provisions idempotently."""

from __future__ import annotations

from enum import StrEnum

import msgspec

from flotilla_contracts import subjects
from flotilla_contracts.ids import check_token


class Retention(StrEnum):
    LIMITS = "limits"
    WORK_QUEUE = "workqueue"


class StreamSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A stream as Flotilla needs it; deployments may raise `replicas` (R3 in production)."""

    name: str
    subjects: tuple[str, ...]
    retention: Retention
    description: str
    duplicate_window_s: float = 1800.0
    max_age_s: float = 0.0  # 0: keep forever
    max_msg_bytes: int = 1024 * 1024
    # Durable consumers allowed on the stream. Set explicitly: nats-server caps a stream that leaves it
    # unset at 1,000, and FLEET_AGENT has one consumer per node.
    max_consumers: int = 10_000


FLEET_EVENTS = StreamSpec(
    name="FLEET_EVENTS",
    subjects=(subjects.ALL_EVENTS,),
    retention=Retention.LIMITS,
    description="Every fleet fact in past tense; read models are rebuilt by replaying it.",
)

FLEET_AGENT = StreamSpec(
    name="FLEET_AGENT",
    subjects=(subjects.ALL_AGENT_COMMANDS,),
    retention=Retention.WORK_QUEUE,
    description="Commands to node-agents; one durable consumer per node, kept until done.",
    max_age_s=7 * 24 * 3600.0,
    max_consumers=1_000_000,
)

STREAMS: tuple[StreamSpec, ...] = (FLEET_EVENTS, FLEET_AGENT)


def agent_consumer(cluster: str, node: str) -> str:
    """Durable consumer name of one node's agent; the length prefix keeps it unambiguous."""
    check_token("cluster", cluster)
    check_token("node", node)
    return f"agent-{len(cluster)}-{cluster}-{node}"


def service_consumer(service: subjects.Service, purpose: str) -> str:
    """Durable consumer name for a service's read model or work, e.g. `heartbeat-membership`."""
    return f"{service.value}-{check_token('purpose', purpose)}"
