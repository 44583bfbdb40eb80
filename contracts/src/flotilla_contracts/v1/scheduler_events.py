"""Scheduler events and the cluster agent's side: placement decisions, applying manifests, reports.

A cluster agent receives `ApplyManifests` on the cluster pseudo-node subject
(`fleet.v1.agent.<cluster>._cluster.apply`, see `ids.CLUSTER_AGENT_NODE`) and reports
`AppliedStatusReported` on `fleet.v1.evt.applied.<cluster>.<subscription>.reported`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import msgspec

from flotilla_contracts.envelope import Message
from flotilla_contracts.ids import ClusterIdField, CommandIdField, SubscriptionNameField
from flotilla_contracts.v1.common import Seconds, ShortText, Text, Timestamp
from flotilla_contracts.v1.scheduler import AppliedState, ClusterPlacement, Count, Manifests, SubscriptionSpec


class SubscriptionApplied(Message, frozen=True, kw_only=True):
    """A subscription was created or changed."""

    SCHEMA = "scheduler.SubscriptionApplied"

    spec: SubscriptionSpec
    generation: Annotated[int, msgspec.Meta(ge=1)]
    created: bool = False
    occurred_at: Timestamp


class SubscriptionDeleted(Message, frozen=True, kw_only=True):
    """A subscription was deleted."""

    SCHEMA = "scheduler.SubscriptionDeleted"

    name: SubscriptionNameField
    occurred_at: Timestamp


class PlacementReason(StrEnum):
    """What made the scheduler (re-)place a subscription."""

    SUBSCRIPTION_APPLIED = "SubscriptionApplied"
    SUBSCRIPTION_DELETED = "SubscriptionDeleted"
    CLUSTER_JOINED = "ClusterJoined"
    CLUSTER_DEREGISTERED = "ClusterDeregistered"
    LABELS_CHANGED = "LabelsChanged"
    TAINTS_CHANGED = "TaintsChanged"
    HEALTH_CHANGED = "HealthChanged"
    TOLERATION_EXPIRED = "TolerationExpired"
    CAPACITY_CHANGED = "CapacityChanged"
    # A fleet disruption ended: placements held on clusters still Unreachable may move again (their tolerations
    # count from the recovery).
    FLEET_RECOVERED = "FleetRecovered"


class PlacementDecided(Message, frozen=True, kw_only=True):
    """A subscription's placement: the full new list, what moved, and why."""

    SCHEMA = "scheduler.PlacementDecided"

    subscription: SubscriptionNameField
    generation: Annotated[int, msgspec.Meta(ge=1)]
    decision: Annotated[int, msgspec.Meta(ge=1, description="Increases with every decision")]
    reason: PlacementReason
    message: Text = ""
    trigger_cluster_id: ClusterIdField | None = None
    placements: list[ClusterPlacement] = []
    added_clusters: list[ClusterIdField] = []
    removed_clusters: list[ClusterIdField] = []
    moved_replicas: Count = 0
    unplaced_replicas: Count = 0
    occurred_at: Timestamp


# The subject id of the fleet disruption events (`fleet.v1.evt.placement._fleet.disrupted`): not a subscription.
FLEET_SCOPE = "_fleet"


class DisruptedGroup(msgspec.Struct, frozen=True, kw_only=True):
    """A group judged disrupted: the whole fleet (`label` "") or the clusters with `label`=`value`."""

    label: ShortText = ""
    value: ShortText = ""
    unreachable: Annotated[int, msgspec.Meta(ge=0, description="Unreachable members when it was judged")]
    total: Annotated[int, msgspec.Meta(ge=0, description="Member clusters when it was judged")]
    since: Timestamp


class FleetDisrupted(Message, frozen=True, kw_only=True):
    """Much of the fleet (or of a label group) went Unreachable at once, likely on the hub's side: the scheduler
    holds every placement on an Unreachable cluster of `disrupted` (no re-placement) until it recovers."""

    SCHEMA = "scheduler.FleetDisrupted"

    began: list[DisruptedGroup] = []
    disrupted: list[DisruptedGroup] = []
    message: Text = ""
    occurred_at: Timestamp


class FleetRecovered(Message, frozen=True, kw_only=True):
    """A disrupted group's Unreachable share fell below the recovery share: re-placement resumes there, and the
    tolerations of clusters still Unreachable count from now."""

    SCHEMA = "scheduler.FleetRecovered"

    ended: list[DisruptedGroup] = []
    disrupted: list[DisruptedGroup] = []  # the groups still disrupted
    message: Text = ""
    occurred_at: Timestamp


class ApplyManifests(Message, frozen=True, kw_only=True):
    """Tell a cluster agent the desired manifests of one subscription; `placed` false removes them all.

    The agent applies them with server-side apply and deletes what it applied before and is now absent.
    """

    SCHEMA = "scheduler.ApplyManifests"

    command_id: CommandIdField
    cluster_id: ClusterIdField
    subscription: SubscriptionNameField
    generation: Annotated[int, msgspec.Meta(ge=1)]
    decision: Annotated[int, msgspec.Meta(ge=1)]
    placed: bool = True
    manifests: Manifests = []
    field_manager: ShortText = "flotilla"
    issued_at: Timestamp


class ApplyResult(StrEnum):
    """What server-side apply (or pruning) did to one object."""

    CREATED = "created"
    CONFIGURED = "configured"
    UNCHANGED = "unchanged"
    DELETED = "deleted"
    FAILED = "failed"


class AppliedResource(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome for one object."""

    api_version: ShortText
    kind: ShortText
    namespace: ShortText = ""
    name: ShortText
    result: ApplyResult
    message: Text = ""


class AppliedStatusReported(Message, frozen=True, kw_only=True):
    """A cluster agent's report on applying one subscription's manifests."""

    SCHEMA = "scheduler.AppliedStatusReported"

    command_id: CommandIdField
    cluster_id: ClusterIdField
    subscription: SubscriptionNameField
    generation: Annotated[int, msgspec.Meta(ge=1)]
    state: AppliedState
    message: Text = ""
    resources: Annotated[list[AppliedResource], msgspec.Meta(max_length=1000)] = []
    duration_s: Seconds = 0.0
    occurred_at: Timestamp
