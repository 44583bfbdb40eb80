"""Heartbeats, the health model, health transition events and health queries.

Heartbeats travel on core NATS (`fleet.v1.hb.<cluster>.<node>`), volatile and high-rate; only health
*transitions* become events in `FLEET_EVENTS`. Liveness is judged on the service's receive clock.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import msgspec

from flotilla_contracts.envelope import Message
from flotilla_contracts.ids import ClusterIdField, NodeNameField
from flotilla_contracts.v1.common import (
    DEFAULT_PAGE,
    Cursor,
    K8sName,
    KubeVersion,
    Limit,
    NodeCondition,
    NodeRole,
    Resources,
    Seconds,
    ShortText,
    Text,
    Timestamp,
)

Count = Annotated[int, msgspec.Meta(ge=0)]
Partitions = Annotated[list[Annotated[int, msgspec.Meta(ge=0)]], msgspec.Meta(max_length=1024)]


class ProbeResult(StrEnum):
    """Result of one API server health endpoint."""

    OK = "ok"
    FAILED = "failed"
    UNREACHABLE = "unreachable"


class ApiServerHealth(msgspec.Struct, frozen=True, kw_only=True):
    """A control-plane node's API server: `/livez`, `/readyz`, and its version."""

    livez: ProbeResult
    readyz: ProbeResult
    version: KubeVersion | None = None
    failed_checks: Annotated[list[ShortText], msgspec.Meta(max_length=64)] = []


class Heartbeat(Message, frozen=True, kw_only=True):
    """A node-agent's periodic report on `fleet.v1.hb.<cluster>.<node>`; ids must match the subject."""

    SCHEMA = "heartbeat.Heartbeat"

    cluster_id: ClusterIdField
    node_id: NodeNameField
    node_name: K8sName
    seq: Annotated[int, msgspec.Meta(ge=0, description="Agent sequence number, +1 per heartbeat")]
    sent_at: Timestamp
    role: NodeRole = NodeRole.WORKER
    kubelet_version: KubeVersion
    kube_proxy_version: KubeVersion | None = None
    conditions: Annotated[list[NodeCondition], msgspec.Meta(max_length=16)] = []
    api_server: ApiServerHealth | None = None
    capacity: Resources | None = None
    allocatable: Resources | None = None
    agent_version: ShortText = ""


MAX_BATCH = 1000  # heartbeats in one HeartbeatBatch: a cluster's nodes fit in a few messages, each under 1 MiB


class HeartbeatBatch(Message, frozen=True, kw_only=True):
    """Several nodes' heartbeats of one cluster in one message on `fleet.v1.hb.<cluster>`.

    Sent by one speaker for several nodes of its cluster (the packed sim, a cluster-level relay): the cluster's
    identity, not a node's (docs/heartbeat.md says what that trusts). Every entry is checked as a single
    heartbeat is: its cluster must be the subject's, its node must pass the cluster's inventory, node quota
    and rate, and a bad entry is refused alone, never the entries beside it.
    """

    SCHEMA = "heartbeat.HeartbeatBatch"

    cluster_id: ClusterIdField
    beats: Annotated[list[Heartbeat], msgspec.Meta(max_length=MAX_BATCH)] = []


class HeartbeatConfigRequest(Message, frozen=True, kw_only=True):
    """Ask the heartbeat service how often to send and when a node is declared missing."""

    SCHEMA = "heartbeat.HeartbeatConfigRequest"


class HeartbeatConfig(Message, frozen=True, kw_only=True):
    """The heartbeat settings the service announces to agents and tools."""

    SCHEMA = "heartbeat.HeartbeatConfig"

    interval_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    missed_intervals: Annotated[int, msgspec.Meta(ge=1)] = 3
    lost_after_s: Annotated[float, msgspec.Meta(gt=0)] = 300.0
    clock_skew_threshold_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    startup_grace_s: Seconds = 0.0
    partition_count: Annotated[int, msgspec.Meta(ge=1)] = 1


class NodeHealth(StrEnum):
    """Health of a node: NotReady as reported; Unreachable after missed intervals; Lost after the grace."""

    READY = "Ready"
    NOT_READY = "NotReady"
    UNREACHABLE = "Unreachable"
    LOST = "Lost"


class ClusterHealth(StrEnum):
    """Health of a cluster, derived from its nodes and API servers."""

    READY = "Ready"
    DEGRADED = "Degraded"
    UNREACHABLE = "Unreachable"
    UNKNOWN = "Unknown"


class NodeCounts(msgspec.Struct, frozen=True, kw_only=True):
    """Nodes by health."""

    ready: Count = 0
    not_ready: Count = 0
    unreachable: Count = 0
    lost: Count = 0


class NodeHealthChanged(Message, frozen=True, kw_only=True):
    """A node's health changed; `from` is null for a node seen for the first time."""

    SCHEMA = "heartbeat.NodeHealthChanged"

    cluster_id: ClusterIdField
    node_id: NodeNameField
    node_name: K8sName
    from_: NodeHealth | None = msgspec.field(default=None, name="from")
    to: NodeHealth
    reason: ShortText
    message: Text = ""
    last_heartbeat_at: Timestamp | None = None
    conditions: Annotated[list[NodeCondition], msgspec.Meta(max_length=16)] = []
    kubelet_version: KubeVersion | None = None
    occurred_at: Timestamp


class ClusterHealthChanged(Message, frozen=True, kw_only=True):
    """A cluster's health changed, with the reason (e.g. which nodes or API servers are not ready)."""

    SCHEMA = "heartbeat.ClusterHealthChanged"

    cluster_id: ClusterIdField
    from_: ClusterHealth | None = msgspec.field(default=None, name="from")
    to: ClusterHealth
    reason: ShortText
    message: Text = ""
    last_heartbeat_at: Timestamp | None = None
    nodes: NodeCounts = NodeCounts()
    api_servers_ready: Count = 0
    api_servers_total: Count = 0
    occurred_at: Timestamp


class ClusterCapacityChanged(Message, frozen=True, kw_only=True):
    """A cluster's summed capacity or allocatable resources changed notably (the scheduler's input)."""

    SCHEMA = "heartbeat.ClusterCapacityChanged"

    cluster_id: ClusterIdField
    capacity: Resources
    allocatable: Resources
    ready_nodes: Count = 0
    occurred_at: Timestamp


class NoiseReason(StrEnum):
    """Why heartbeats were ignored."""

    UNKNOWN_CLUSTER = "unknown_cluster"
    PENDING_CLUSTER = "pending_cluster"
    REJECTED_CLUSTER = "rejected_cluster"
    DEREGISTERED_CLUSTER = "deregistered_cluster"


class HeartbeatNoiseReported(Message, frozen=True, kw_only=True):
    """Heartbeats for a cluster that is not a member were dropped; reported at most once per window."""

    SCHEMA = "heartbeat.HeartbeatNoiseReported"

    cluster_id: ClusterIdField
    reason: NoiseReason
    count: Annotated[int, msgspec.Meta(ge=1)]
    sample_nodes: Annotated[list[NodeNameField], msgspec.Meta(max_length=10)] = []
    window_start: Timestamp
    window_end: Timestamp


class ClusterHealthInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A cluster's health as the heartbeat service tracks it."""

    cluster_id: ClusterIdField
    state: ClusterHealth
    since: Timestamp | None = None
    reason: ShortText = ""
    message: Text = ""
    last_heartbeat_at: Timestamp | None = None
    nodes: NodeCounts = NodeCounts()
    api_server_versions: Annotated[list[KubeVersion], msgspec.Meta(max_length=16)] = []
    kubelet_versions: Annotated[list[KubeVersion], msgspec.Meta(max_length=64)] = []


class NodeHealthInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A node's health, versions and last contact."""

    cluster_id: ClusterIdField
    node_id: NodeNameField
    node_name: K8sName
    role: NodeRole = NodeRole.WORKER
    state: NodeHealth
    since: Timestamp | None = None
    reason: ShortText = ""
    last_heartbeat_at: Timestamp | None = None
    last_seq: Count = 0
    clock_skew_s: float = 0.0
    kubelet_version: KubeVersion | None = None
    kube_proxy_version: KubeVersion | None = None
    conditions: Annotated[list[NodeCondition], msgspec.Meta(max_length=16)] = []
    api_server: ApiServerHealth | None = None
    allocatable: Resources | None = None
    agent_version: ShortText = ""


class FleetHealthRequest(Message, frozen=True, kw_only=True):
    """Fleet counts by state and the worst clusters."""

    SCHEMA = "heartbeat.FleetHealthRequest"

    worst: Annotated[int, msgspec.Meta(ge=0, le=100)] = 10


class FleetHealthReply(Message, frozen=True, kw_only=True):
    """Counts for the partitions this replica owns (`partitions`); a client sums replies over all."""

    SCHEMA = "heartbeat.FleetHealthReply"

    clusters: dict[ClusterHealth, Count] = {}
    nodes: NodeCounts = NodeCounts()
    worst_clusters: list[ClusterHealthInfo] = []
    partitions: Partitions = []
    partition_count: Annotated[int, msgspec.Meta(ge=1)] = 1


class ClustersHealthRequest(Message, frozen=True, kw_only=True):
    """Health of some or all clusters, one page at a time."""

    SCHEMA = "heartbeat.ClustersHealthRequest"

    cluster_ids: Annotated[list[ClusterIdField], msgspec.Meta(max_length=1000)] = []
    states: list[ClusterHealth] = []
    limit: Limit = DEFAULT_PAGE
    cursor: Cursor = ""


class ClustersHealthReply(Message, frozen=True, kw_only=True):
    """One page of cluster health for this replica's partitions."""

    SCHEMA = "heartbeat.ClustersHealthReply"

    clusters: list[ClusterHealthInfo] = []
    next_cursor: Cursor = ""
    partitions: Partitions = []
    partition_count: Annotated[int, msgspec.Meta(ge=1)] = 1


class NodesHealthRequest(Message, frozen=True, kw_only=True):
    """Health of the nodes of one cluster, or of all, one page at a time."""

    SCHEMA = "heartbeat.NodesHealthRequest"

    cluster_id: ClusterIdField | None = None
    states: list[NodeHealth] = []
    limit: Limit = DEFAULT_PAGE
    cursor: Cursor = ""


class NodesHealthReply(Message, frozen=True, kw_only=True):
    """One page of node health for this replica's partitions."""

    SCHEMA = "heartbeat.NodesHealthReply"

    nodes: list[NodeHealthInfo] = []
    next_cursor: Cursor = ""
    partitions: Partitions = []
    partition_count: Annotated[int, msgspec.Meta(ge=1)] = 1
