"""Subscriptions: workload manifests, placement policy and overrides, and the commands about them.

Placement events and the cluster agent's apply command and report are in `scheduler_events`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import msgspec

from flotilla_contracts.envelope import ErrorBody, Message
from flotilla_contracts.ids import ClusterIdField, SubscriptionNameField
from flotilla_contracts.v1.common import (
    DEFAULT_PAGE,
    Cursor,
    K8sName,
    LabelKey,
    LabelValue,
    Limit,
    Selector,
    ShortText,
    TaintEffect,
    Text,
    Timestamp,
)

Count = Annotated[int, msgspec.Meta(ge=0)]
# A Kubernetes object as JSON (apiVersion, kind, metadata, ...); the scheduler checks it is one.
Manifest = Annotated[dict[str, Any], msgspec.Meta(description="A Kubernetes object as a JSON object")]
Manifests = Annotated[list[Manifest], msgspec.Meta(max_length=500)]


class TolerationOperator(StrEnum):
    """`Equal` matches key and value; `Exists` matches any value of the key (or any taint if no key)."""

    EQUAL = "Equal"
    EXISTS = "Exists"


class Toleration(msgspec.Struct, frozen=True, kw_only=True):
    """Tolerates cluster taints as Kubernetes pods do; `toleration_seconds` bounds a NoExecute stay."""

    key: LabelKey | None = None
    operator: TolerationOperator = TolerationOperator.EQUAL
    value: LabelValue = ""
    effect: TaintEffect | None = None
    toleration_seconds: Annotated[int, msgspec.Meta(ge=0)] | None = None


class Strategy(StrEnum):
    """`Replicate`: the whole workload on every chosen cluster; `Divide`: split `replicas` among them."""

    REPLICATE = "Replicate"
    DIVIDE = "Divide"


class Weighting(StrEnum):
    """How `Divide` weighs clusters: static weights, or allocatable capacity from heartbeats."""

    STATIC = "Static"
    CAPACITY = "Capacity"


class CapacityResource(StrEnum):
    """The resource `Capacity` weighting compares."""

    CPU = "cpu"
    MEMORY = "memory"
    PODS = "pods"


class StaticWeight(msgspec.Struct, frozen=True, kw_only=True):
    """A weight for clusters picked by a selector or by id (the first matching entry wins)."""

    selector: Selector = ""
    cluster_ids: Annotated[list[ClusterIdField], msgspec.Meta(max_length=1000)] = []
    weight: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)]


class PlacementPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """Where a subscription goes: which clusters may take it, how many, and how replicas are split."""

    selector: Selector = ""
    tolerations: Annotated[list[Toleration], msgspec.Meta(max_length=64)] = []
    strategy: Strategy = Strategy.REPLICATE
    replicas: Annotated[int, msgspec.Meta(ge=0)] = 0
    weighting: Weighting = Weighting.STATIC
    static_weights: Annotated[list[StaticWeight], msgspec.Meta(max_length=256)] = []
    capacity_resource: CapacityResource = CapacityResource.CPU
    min_replicas_per_cluster: Count = 0
    max_replicas_per_cluster: Annotated[int, msgspec.Meta(ge=1)] | None = None
    max_clusters: Annotated[int, msgspec.Meta(ge=1)] | None = None
    spread_topology_key: LabelKey | None = None


class OverrideStage(StrEnum):
    """Global rules (by cluster selector) apply first, then local (per-cluster) ones."""

    GLOBAL = "global"
    LOCAL = "local"


class PatchType(StrEnum):
    """How an override changes matching manifests."""

    JSON_PATCH = "JSONPatch"
    MERGE_PATCH = "MergePatch"


class JsonPatchOpKind(StrEnum):
    """RFC 6902 operation names."""

    ADD = "add"
    REMOVE = "remove"
    REPLACE = "replace"
    MOVE = "move"
    COPY = "copy"
    TEST = "test"


class JsonPatchOp(msgspec.Struct, frozen=True, kw_only=True):
    """One RFC 6902 operation."""

    op: JsonPatchOpKind
    path: Annotated[str, msgspec.Meta(max_length=1024)]
    value: Any = None
    from_: Annotated[str, msgspec.Meta(max_length=1024)] = msgspec.field(default="", name="from")


class ManifestSelector(msgspec.Struct, frozen=True, kw_only=True):
    """Which manifests an override touches; empty fields match everything."""

    api_version: ShortText = ""
    kind: ShortText = ""
    namespace: ShortText = ""
    name: ShortText = ""


class Override(msgspec.Struct, frozen=True, kw_only=True):
    """A patch applied to the manifests of some clusters; lower `priority` first within a stage."""

    name: K8sName
    stage: OverrideStage
    priority: int = 0
    selector: Selector = ""
    cluster_ids: Annotated[list[ClusterIdField], msgspec.Meta(max_length=1000)] = []
    target: ManifestSelector = ManifestSelector()
    type: PatchType
    json_patch: Annotated[list[JsonPatchOp], msgspec.Meta(max_length=256)] = []
    merge_patch: dict[str, Any] = {}


class SubscriptionSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A workload (Kubernetes manifests), its placement policy and its overrides."""

    name: SubscriptionNameField
    description: Text = ""
    manifests: Manifests
    policy: PlacementPolicy = PlacementPolicy()
    overrides: Annotated[list[Override], msgspec.Meta(max_length=256)] = []


class ClusterPlacement(msgspec.Struct, frozen=True, kw_only=True):
    """One cluster's share: its replicas under Divide (null under Replicate) and since when."""

    cluster_id: ClusterIdField
    replicas: Count | None = None
    since: Timestamp | None = None


class AppliedState(StrEnum):
    """Where a subscription stands on one cluster."""

    PENDING = "Pending"
    APPLYING = "Applying"
    APPLIED = "Applied"
    FAILED = "Failed"
    REMOVED = "Removed"


class ClusterApplied(msgspec.Struct, frozen=True, kw_only=True):
    """Applied status of a subscription on one cluster, as its agent last reported."""

    cluster_id: ClusterIdField
    generation: Count = 0
    state: AppliedState = AppliedState.PENDING
    message: Text = ""
    reported_at: Timestamp | None = None


class SubscriptionInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A subscription with its current placement and per-cluster applied status."""

    spec: SubscriptionSpec
    generation: Annotated[int, msgspec.Meta(ge=1)]
    created_at: Timestamp
    updated_at: Timestamp
    placements: list[ClusterPlacement] = []
    applied: list[ClusterApplied] = []
    unplaced_replicas: Count = 0
    message: Text = ""


class ApplySubscriptionRequest(Message, frozen=True, kw_only=True):
    """Create or replace a subscription (like `kubectl apply`); placement follows asynchronously."""

    SCHEMA = "scheduler.ApplySubscriptionRequest"

    spec: SubscriptionSpec


class ApplySubscriptionReply(Message, frozen=True, kw_only=True):
    """The stored generation; `changed` false when the spec was identical."""

    SCHEMA = "scheduler.ApplySubscriptionReply"

    name: SubscriptionNameField
    generation: Annotated[int, msgspec.Meta(ge=1)]
    created: bool = False
    changed: bool = True


class ApplyOutcome(StrEnum):
    """What one spec of a batch came to."""

    APPLIED = "applied"  # created or changed: a new generation, placed and announced
    UNCHANGED = "unchanged"  # identical to the stored spec: nothing happened
    ERROR = "error"  # refused (see `error`); the other specs of the batch are not affected


# The most specs one `subscriptions.batch.apply` takes; more are refused (invalid_field): send them in chunks.
MAX_APPLY_BATCH = 500


class ApplySubscriptionsRequest(Message, frozen=True, kw_only=True):
    """Create or replace several subscriptions in one request, each as `subscriptions.apply` would, in order.
    At most MAX_APPLY_BATCH specs, and the request within the service's message size limit."""

    SCHEMA = "scheduler.ApplySubscriptionsRequest"

    specs: Annotated[
        list[SubscriptionSpec], msgspec.Meta(description=f"1-{MAX_APPLY_BATCH} subscriptions, applied in order")
    ]


class ApplyResult(msgspec.Struct, frozen=True, kw_only=True):
    """One spec's answer in a batch: its generation when applied or unchanged, else the error (code, message)."""

    name: SubscriptionNameField
    outcome: ApplyOutcome
    generation: Count = 0
    created: bool = False
    error: ErrorBody | None = None


class ApplySubscriptionsReply(Message, frozen=True, kw_only=True):
    """One result per spec, in the order of the request."""

    SCHEMA = "scheduler.ApplySubscriptionsReply"

    results: list[ApplyResult] = []


class ListSubscriptionsRequest(Message, frozen=True, kw_only=True):
    """List subscriptions by name, one page at a time."""

    SCHEMA = "scheduler.ListSubscriptionsRequest"

    limit: Limit = DEFAULT_PAGE
    cursor: Cursor = ""


class SubscriptionSummary(msgspec.Struct, frozen=True, kw_only=True):
    """One line of `subscriptions list`."""

    name: SubscriptionNameField
    generation: Annotated[int, msgspec.Meta(ge=1)]
    strategy: Strategy
    clusters: Count = 0
    applied: Count = 0
    failed: Count = 0
    updated_at: Timestamp


class ListSubscriptionsReply(Message, frozen=True, kw_only=True):
    """One page of subscriptions by name; `next_cursor` empty on the last page."""

    SCHEMA = "scheduler.ListSubscriptionsReply"

    subscriptions: list[SubscriptionSummary] = []
    total: Count = 0
    next_cursor: Cursor = ""


class GetSubscriptionRequest(Message, frozen=True, kw_only=True):
    """One subscription with placements and applied status."""

    SCHEMA = "scheduler.GetSubscriptionRequest"

    name: SubscriptionNameField


class GetSubscriptionReply(Message, frozen=True, kw_only=True):
    """The subscription."""

    SCHEMA = "scheduler.GetSubscriptionReply"

    subscription: SubscriptionInfo


class GetRenderedRequest(Message, frozen=True, kw_only=True):
    """The manifests of a subscription as rendered for one cluster, overrides applied."""

    SCHEMA = "scheduler.GetRenderedRequest"

    name: SubscriptionNameField
    cluster_id: ClusterIdField


class GetRenderedReply(Message, frozen=True, kw_only=True):
    """Rendered manifests, and the overrides applied, in order."""

    SCHEMA = "scheduler.GetRenderedReply"

    name: SubscriptionNameField
    cluster_id: ClusterIdField
    generation: Annotated[int, msgspec.Meta(ge=1)]
    placed: bool
    replicas: Count | None = None
    manifests: Manifests = []
    overrides_applied: Annotated[list[K8sName], msgspec.Meta(max_length=256)] = []


class DeleteSubscriptionRequest(Message, frozen=True, kw_only=True):
    """Delete a subscription; its workloads are removed from every cluster."""

    SCHEMA = "scheduler.DeleteSubscriptionRequest"

    name: SubscriptionNameField


class DeleteSubscriptionReply(Message, frozen=True, kw_only=True):
    """How many clusters will have the workload removed."""

    SCHEMA = "scheduler.DeleteSubscriptionReply"

    name: SubscriptionNameField
    clusters: Count = 0
