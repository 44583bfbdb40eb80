"""Every subject, stream, consumer name and queue group Flotilla uses; handlers never type one by hand."""

from __future__ import annotations

from enum import StrEnum

from flotilla_contracts.ids import check_token

ROOT = "fleet.v1"
CMD_PREFIX = f"{ROOT}.cmd"
EVT_PREFIX = f"{ROOT}.evt"
HB_PREFIX = f"{ROOT}.hb"
AGENT_PREFIX = f"{ROOT}.agent"

ALL_COMMANDS = f"{CMD_PREFIX}.>"
ALL_EVENTS = f"{EVT_PREFIX}.>"
ALL_HEARTBEATS = f"{HB_PREFIX}.*.*"
ALL_HEARTBEAT_BATCHES = f"{HB_PREFIX}.*"
ALL_AGENT_COMMANDS = f"{AGENT_PREFIX}.>"

# NATS service discovery (ADR-32 "micro" protocol).
SRV_PING = "$SRV.PING"
SRV_INFO = "$SRV.INFO"
SRV_STATS = "$SRV.STATS"
SRV_VERBS = (SRV_PING, SRV_INFO, SRV_STATS)


class Service(StrEnum):
    """The five services; the value is the service name, command subject token and queue group."""

    REGISTRATION = "registration"
    HEARTBEAT = "heartbeat"
    SCHEDULER = "scheduler"
    UPGRADE_ORCHESTRATOR = "upgrade-orchestrator"
    NODE_AGENT = "node-agent"


class Entity(StrEnum):
    """The first token after `fleet.v1.evt`: what an event is about."""

    TOKEN = "token"
    CLUSTER = "cluster"
    NODE = "node"
    CLUSTER_HEALTH = "cluster-health"
    NODE_HEALTH = "node-health"
    HEARTBEAT_NOISE = "heartbeat-noise"
    SUBSCRIPTION = "subscription"
    PLACEMENT = "placement"
    APPLIED = "applied"
    ROLLOUT = "rollout"
    ROLLOUT_WAVE = "rollout-wave"
    ROLLOUT_CLUSTER = "rollout-cluster"
    ROLLOUT_NODE = "rollout-node"
    NODE_STEP = "node-step"
    HOST_KEYS = "host-keys"
    DEAD_LETTER = "dead-letter"
    SECURITY = "security"


def queue_group(service: Service) -> str:
    """Queue group for a service's command subscribers: one replica answers each command."""
    return service.value


def command(service: Service, verb: str) -> str:
    """`fleet.v1.cmd.<service>.<verb>`; a verb is one or more lower-case dot-separated words."""
    return f"{CMD_PREFIX}.{service.value}.{verb}"


# A person's command: `fleet.v1.cmd.<service>.<verb>.by.<user>`. A named user's bus grant allows only the
# `.by.<their own name>` form, so the subject proves who sent it (the bus authenticated them) and a service
# takes the actor from it, never from the body. The plain form is the built-in admin's and the services'.
BY = "by"


def command_by(service: Service, verb: str, user: str) -> str:
    """`fleet.v1.cmd.<service>.<verb>.by.<user>`: the command as the named user `user` sends it."""
    return f"{command(service, verb)}.{BY}.{user}"


def actor_of(subject: str) -> str:
    """The user a command subject names (`....by.<user>`), or "" for the plain form."""
    head, sep, user = subject.rpartition(".")
    return user if sep and head.endswith(f".{BY}") and user else ""


def service_commands(service: Service) -> str:
    """Wildcard over every command of one service."""
    return f"{CMD_PREFIX}.{service.value}.>"


def event(entity: Entity, ids: tuple[str, ...], name: str) -> str:
    """`fleet.v1.evt.<entity>.<id...>.<event>`; every id is checked to be a token."""
    checked = ".".join(check_token(f"{entity.value} id", value) for value in ids)
    return f"{EVT_PREFIX}.{entity.value}.{checked}.{name}"


def entity_events(entity: Entity) -> str:
    """Wildcard over every event of one entity."""
    return f"{EVT_PREFIX}.{entity.value}.>"


def heartbeat(cluster: str, node: str) -> str:
    """`fleet.v1.hb.<cluster>.<node>`: core NATS, volatile, partitionable by cluster token."""
    return f"{HB_PREFIX}.{check_token('cluster', cluster)}.{check_token('node', node)}"


def heartbeat_batch(cluster: str) -> str:
    """`fleet.v1.hb.<cluster>`: several nodes' heartbeats of one cluster (HeartbeatBatch), core NATS."""
    return f"{HB_PREFIX}.{check_token('cluster', cluster)}"


def agent_command(cluster: str, node: str, verb: str) -> str:
    """`fleet.v1.agent.<cluster>.<node>.<verb>`: JetStream work queue, a durable consumer per node with work
    (created by the sender before the first command: flotilla_runtime.agent_consumers)."""
    return f"{AGENT_PREFIX}.{check_token('cluster', cluster)}.{check_token('node', node)}.{verb}"


def agent_commands_for(cluster: str, node: str) -> str:
    """Filter subject of one node's durable consumer."""
    return f"{AGENT_PREFIX}.{check_token('cluster', cluster)}.{check_token('node', node)}.>"


def srv_subjects(name: str, instance_id: str) -> list[str]:
    """Every `$SRV` subject one service instance answers: all services, by name, and by name and id."""
    subjects: list[str] = []
    for verb in SRV_VERBS:
        subjects += [verb, f"{verb}.{name}", f"{verb}.{name}.{instance_id}"]
    return subjects


# --- heartbeat partitions (NATS subject mapping with `partition()` on the cluster token) ---
HB_PARTITION_PREFIX = f"{ROOT}.hbp"


def heartbeat_partition(partition: int) -> str:
    """Filter of one partition's heartbeats once the server maps `fleet.v1.hb.*.*` to partitions."""
    return f"{HB_PARTITION_PREFIX}.{int(partition)}.*.*"


def heartbeat_batch_partition(partition: int) -> str:
    """Filter of one partition's heartbeat batches (the same partition as the cluster's single heartbeats)."""
    return f"{HB_PARTITION_PREFIX}.{int(partition)}.*"


def heartbeat_batch_partition_mapping(count: int) -> tuple[str, str]:
    """The server mapping (source, destination) of heartbeat batches: same hash of the same cluster token."""
    if count < 1:
        raise ValueError("partition count must be at least 1")
    return ALL_HEARTBEAT_BATCHES, f"{HB_PARTITION_PREFIX}.{{{{partition({count},1)}}}}.{{{{wildcard(1)}}}}"


def heartbeat_partition_mapping(count: int) -> tuple[str, str]:
    """The server mapping (source, destination) that splits heartbeats into `count` partitions by cluster token."""
    if count < 1:
        raise ValueError("partition count must be at least 1")
    return ALL_HEARTBEATS, f"{HB_PARTITION_PREFIX}.{{{{partition({count},1)}}}}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}"


def partition_of(cluster: str, count: int) -> int:
    """The partition nats-server's `partition(count,1)` puts a cluster token in (FNV-1a 32 of the token)."""
    h = 0x811C9DC5
    for byte in cluster.encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h % count


def partition_command(service: Service, partition: int, verb: str) -> str:
    """`fleet.v1.cmd.<service>.partition.<n>.<verb>`: a query answered by the replica owning partition n."""
    return f"{CMD_PREFIX}.{service.value}.partition.{int(partition)}.{verb}"


def partition_queue_group(service: Service, partition: int) -> str:
    """Queue group of the replicas owning one partition (one of them answers)."""
    return f"{service.value}-p{int(partition)}"
