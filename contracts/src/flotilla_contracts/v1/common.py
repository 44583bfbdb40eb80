"""Value types shared by several v1 domains: times, versions, labels, taints, conditions, resources."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

import msgspec

from flotilla_contracts.ids import K8S_NAME_PATTERN, NodeNameField

# Every time on the bus is a timezone-aware `datetime`, encoded as RFC 3339 (UTC, "Z").
Timestamp = Annotated[datetime, msgspec.Meta(tz=True, description="RFC 3339 time with a UTC offset")]

Seconds = Annotated[float, msgspec.Meta(ge=0, description="A duration in seconds")]

# "1.30.4" or "v1.30.4", with an optional pre-release and build suffix ("v1.30.4+k3s1").
KUBE_VERSION_PATTERN = r"^v?[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$"
KubeVersion = Annotated[
    str,
    msgspec.Meta(pattern=KUBE_VERSION_PATTERN, max_length=64, description="Kubernetes version, e.g. v1.30.4"),
]

Selector = Annotated[
    str,
    msgspec.Meta(
        max_length=4096,
        description="Kubernetes label-selector syntax (=, ==, !=, in, notin, key, !key); empty: everything",
    ),
]

# Label keys: an optional DNS-subdomain prefix and "/", then a name of at most 63 characters.
LABEL_KEY_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE_PATTERN = r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$"
LabelKey = Annotated[str, msgspec.Meta(pattern=LABEL_KEY_PATTERN, max_length=317, description="Kubernetes label key")]
LabelValue = Annotated[
    str, msgspec.Meta(pattern=LABEL_VALUE_PATTERN, max_length=63, description="Kubernetes label value")
]
MAX_CLUSTER_LABELS = 64
MAX_NODE_LABELS = 256
Labels = Annotated[
    dict[LabelKey, LabelValue],
    msgspec.Meta(max_length=MAX_CLUSTER_LABELS, description="Labels of a cluster or token (at most 64)"),
]
NodeLabels = Annotated[
    dict[LabelKey, LabelValue],
    msgspec.Meta(max_length=MAX_NODE_LABELS, description="Labels of a Kubernetes node (at most 256)"),
]

K8sName = Annotated[
    str,
    msgspec.Meta(pattern=K8S_NAME_PATTERN, max_length=253, description="Kubernetes object name (RFC 1123 subdomain)"),
]
ClusterName = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        max_length=63,
        description="Cluster name: an RFC 1123 label, unique among live clusters",
    ),
]
ShortText = Annotated[str, msgspec.Meta(max_length=256, description="A short word or phrase")]
Text = Annotated[str, msgspec.Meta(max_length=4096, description="Free text for people")]
Cursor = Annotated[str, msgspec.Meta(max_length=1024, description="Opaque paging cursor; empty: first page")]
Limit = Annotated[int, msgspec.Meta(ge=1, le=1000, description="Page size")]
DEFAULT_PAGE = 500


class NodeRole(StrEnum):
    """What a node does in its cluster."""

    CONTROL_PLANE = "control-plane"
    WORKER = "worker"


class TaintEffect(StrEnum):
    """Kubernetes taint effects, applied to clusters as the scheduler reads them."""

    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


class Taint(msgspec.Struct, frozen=True, kw_only=True):
    """A taint on a cluster (or a node): key, optional value, effect."""

    key: LabelKey
    value: LabelValue = ""
    effect: TaintEffect
    added_at: Timestamp | None = None


class ConditionStatus(StrEnum):
    """Status of a condition, as Kubernetes reports it."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class NodeConditionType(StrEnum):
    """Node conditions: the five Kubernetes ones, then two the heartbeat service derives itself."""

    READY = "Ready"
    MEMORY_PRESSURE = "MemoryPressure"
    DISK_PRESSURE = "DiskPressure"
    PID_PRESSURE = "PIDPressure"
    NETWORK_UNAVAILABLE = "NetworkUnavailable"
    # Set only by the heartbeat service; agents never send these.
    FLAPPING = "Flapping"
    CLOCK_SKEW = "ClockSkew"


class NodeCondition(msgspec.Struct, frozen=True, kw_only=True):
    """One node condition: type, status, and a CamelCase reason with a message, as in Kubernetes."""

    type: NodeConditionType
    status: ConditionStatus
    reason: ShortText = ""
    message: Text = ""
    last_transition_at: Timestamp | None = None


class Resources(msgspec.Struct, frozen=True, kw_only=True):
    """Capacity or allocatable resources in base units; `other` keeps extended resources as quantities."""

    cpu_millis: Annotated[int, msgspec.Meta(ge=0)] = 0
    memory_bytes: Annotated[int, msgspec.Meta(ge=0)] = 0
    ephemeral_storage_bytes: Annotated[int, msgspec.Meta(ge=0)] = 0
    pods: Annotated[int, msgspec.Meta(ge=0)] = 0
    other: Annotated[dict[ShortText, ShortText], msgspec.Meta(max_length=64)] = {}


class PodRef(msgspec.Struct, frozen=True, kw_only=True):
    """A pod named in a report, e.g. one whose eviction a PodDisruptionBudget blocks."""

    namespace: K8sName
    name: K8sName
    reason: Text = ""


class NodeRef(msgspec.Struct, frozen=True, kw_only=True):
    """A node by its subject token and its Kubernetes name."""

    node_id: NodeNameField
    node_name: K8sName
