"""JetStream streams and consumer naming, as plain definitions the runtime provisions idempotently.

Events live in two streams that never overlap (nats-server refuses overlapping subjects):
FLEET_REPORTS holds what members publish (node-step reports, applied reports, agents' dead letters), bounded per
subject, in size and in age, so a member cannot grow the hub's storage; FLEET_EVENTS holds every other event,
what the services emit, the trusted history read models are rebuilt from, kept forever.
"""

from __future__ import annotations

from enum import StrEnum

import msgspec

from flotilla_contracts import subjects
from flotilla_contracts.ids import check_token
from flotilla_contracts.subjects import Entity, Service


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
    max_msgs_per_subject: int = -1  # -1: unlimited; past it the oldest message of that subject goes
    max_bytes: int = -1  # -1: unlimited; past it the oldest messages of the stream go
    # Durable consumers allowed on the stream. Set explicitly: nats-server caps a stream that leaves it
    # unset at 1,000, and FLEET_AGENT has one consumer per node.
    max_consumers: int = 10_000


# What members may publish (permissions.cluster_grant and node_grant): the events the catalogue gives to the
# node-agent, and every dead letter of the node-agent (a cluster's agents, or a node-agent process on a
# service login). A contract test checks each catalogue event lands in exactly one stream.
MEMBER_ENTITIES = (Entity.NODE_STEP, Entity.APPLIED)
MEMBER_DEAD_LETTERS = f"{subjects.EVT_PREFIX}.{Entity.DEAD_LETTER.value}.{Service.NODE_AGENT.value}.>"

FLEET_EVENTS = StreamSpec(
    name="FLEET_EVENTS",
    subjects=(
        *(subjects.entity_events(e) for e in Entity if e not in (*MEMBER_ENTITIES, Entity.DEAD_LETTER)),
        *(
            f"{subjects.EVT_PREFIX}.{Entity.DEAD_LETTER.value}.{s.value}.>"
            for s in Service
            if s is not Service.NODE_AGENT
        ),
    ),
    retention=Retention.LIMITS,
    description="Every fact the services emit, in past tense; read models are rebuilt by replaying it.",
)

FLEET_REPORTS = StreamSpec(
    name="FLEET_REPORTS",
    subjects=(*(subjects.entity_events(e) for e in MEMBER_ENTITIES), MEMBER_DEAD_LETTERS),
    retention=Retention.LIMITS,
    description="What members report (node steps, applied workloads, agents' dead letters), bounded per subject, "
    "size and age.",
    max_age_s=7 * 24 * 3600.0,
    max_msgs_per_subject=1_000,
    max_bytes=1024**3,
)

FLEET_AGENT = StreamSpec(
    name="FLEET_AGENT",
    subjects=(subjects.ALL_AGENT_COMMANDS,),
    retention=Retention.WORK_QUEUE,
    description="Commands to node-agents: a durable consumer per node with work (created by the sender, retired "
    "when idle) and one per cluster agent.",
    max_age_s=7 * 24 * 3600.0,
    max_consumers=1_000_000,
)

# In provisioning order: FLEET_EVENTS gives up the members' subjects (a deployment from before FLEET_REPORTS has
# FLEET_EVENTS on `fleet.v1.evt.>`) before FLEET_REPORTS takes them.
STREAMS: tuple[StreamSpec, ...] = (FLEET_EVENTS, FLEET_REPORTS, FLEET_AGENT)
EVENT_STREAMS: tuple[StreamSpec, ...] = (FLEET_EVENTS, FLEET_REPORTS)


def _tokens_overlap(a: list[str], b: list[str]) -> bool:
    if not a or not b:
        return not a and not b
    if a[0] == ">" or b[0] == ">":
        return True
    return (a[0] == b[0] or "*" in (a[0], b[0])) and _tokens_overlap(a[1:], b[1:])


def _tokens_cover(pattern: list[str], inner: list[str]) -> bool:
    if not pattern or not inner:
        return not pattern and not inner
    if pattern[0] == ">":
        return True
    if inner[0] == ">" or (pattern[0] != "*" and (inner[0] == "*" or pattern[0] != inner[0])):
        return False
    return _tokens_cover(pattern[1:], inner[1:])


def subjects_overlap(a: str, b: str) -> bool:
    """Whether some subject matches both NATS patterns (`*` one token, `>` the rest)."""
    return _tokens_overlap(a.split("."), b.split("."))


def subject_covers(pattern: str, inner: str) -> bool:
    """Whether every subject matching `inner` matches `pattern`."""
    return _tokens_cover(pattern.split("."), inner.split("."))


def event_streams_for(filter_subject: str) -> tuple[StreamSpec, ...]:
    """The event streams holding messages that `filter_subject` may match, FLEET_EVENTS first."""
    return tuple(s for s in EVENT_STREAMS if any(subjects_overlap(filter_subject, own) for own in s.subjects))


def event_stream_of(filter_subjects: list[str] | tuple[str, ...]) -> StreamSpec:
    """The one event stream a durable consumer with these filters reads (a consumer reads a single stream)."""
    for spec in EVENT_STREAMS:
        if all(any(subject_covers(own, f) for own in spec.subjects) for f in filter_subjects):
            return spec
    raise ValueError(f"{list(filter_subjects)} are not all within one event stream: consume each stream apart")


def agent_consumer(cluster: str, node: str) -> str:
    """Durable consumer name of one node's agent; the length prefix keeps it unambiguous."""
    check_token("cluster", cluster)
    check_token("node", node)
    return f"agent-{len(cluster)}-{cluster}-{node}"


def agent_consumer_ids(name: str) -> tuple[str, str] | None:
    """The (cluster, node) of an `agent_consumer` name; None for any other consumer name."""
    head, _, rest = name.partition("-")
    length, _, ids = rest.partition("-")
    if head != "agent" or not length.isdigit() or len(ids) < int(length) + 2 or ids[int(length)] != "-":
        return None
    return ids[: int(length)], ids[int(length) + 1 :]


def service_consumer(service: subjects.Service, purpose: str) -> str:
    """Durable consumer name for a service's read model or work, e.g. `heartbeat-membership`."""
    return f"{service.value}-{check_token('purpose', purpose)}"
