"""Rollout state: the state enums, status and list replies, and the events for every transition.

Node step states are exactly those of DESIGN.md I4: Pending, Cordoned, Drained, Upgraded, Verified,
Uncordoned, or Failed; they move forward only, backward only by an explicit rollback.
"""

from __future__ import annotations

from enum import StrEnum

import msgspec

from flotilla_contracts.envelope import Message
from flotilla_contracts.ids import ClusterIdField, NodeNameField, RolloutIdField
from flotilla_contracts.v1.agent import StepKind
from flotilla_contracts.v1.common import (
    DEFAULT_PAGE,
    Cursor,
    K8sName,
    KubeVersion,
    Limit,
    NodeRole,
    ShortText,
    Text,
    Timestamp,
)
from flotilla_contracts.v1.upgrade import Count, RolloutSpec, UpgradePlan, WaveIndex


class RolloutState(StrEnum):
    """Where a rollout stands."""

    PENDING = "Pending"
    RUNNING = "Running"
    AWAITING_APPROVAL = "AwaitingApproval"
    PAUSED = "Paused"
    FROZEN = "Frozen"
    ROLLING_BACK = "RollingBack"
    SUCCEEDED = "Succeeded"
    COMPLETED_WITH_FAILURES = "CompletedWithFailures"
    ABORTED = "Aborted"
    ROLLED_BACK = "RolledBack"


class WaveState(StrEnum):
    """Where a wave stands."""

    PENDING = "Pending"
    AWAITING_APPROVAL = "AwaitingApproval"
    RUNNING = "Running"
    SOAKING = "Soaking"
    SUCCEEDED = "Succeeded"
    COMPLETED_WITH_FAILURES = "CompletedWithFailures"
    ABORTED = "Aborted"


class ClusterRolloutState(StrEnum):
    """Where one cluster stands in a rollout."""

    PENDING = "Pending"
    WAITING_WINDOW = "WaitingWindow"
    UPGRADING_CONTROL_PLANE = "UpgradingControlPlane"
    UPGRADING_WORKERS = "UpgradingWorkers"
    SOAKING = "Soaking"
    FROZEN = "Frozen"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SKIPPED = "Skipped"
    ROLLING_BACK = "RollingBack"
    ROLLED_BACK = "RolledBack"
    ABORTED = "Aborted"


class NodeStepState(StrEnum):
    """A node's progress through its upgrade (DESIGN.md I4), exactly these states."""

    PENDING = "Pending"
    CORDONED = "Cordoned"
    DRAINED = "Drained"
    UPGRADED = "Upgraded"
    VERIFIED = "Verified"
    UNCORDONED = "Uncordoned"
    FAILED = "Failed"


class Direction(StrEnum):
    """Forward to the target, or back to the previous version by an explicit rollback."""

    FORWARD = "forward"
    ROLLBACK = "rollback"


class FreezeReason(StrEnum):
    """Why new disruption stopped (I7)."""

    NODE_FAILURE_BUDGET_EXCEEDED = "NodeFailureBudgetExceeded"
    CLUSTER_FAILURE_BUDGET_EXCEEDED = "ClusterFailureBudgetExceeded"
    HEALTH_GATE_FAILED = "HealthGateFailed"
    CLUSTER_UNREACHABLE = "ClusterUnreachable"
    LOST_CONTACT = "LostContact"
    # Running, yet nothing issued and nothing received for the no-progress time; the message names the wait.
    NO_PROGRESS = "NoProgress"
    # A node of a cluster the rollout had upgraded reports an older kubelet or API server than the target.
    VERSION_DRIFT = "VersionDrift"
    # Much of the fleet went Unreachable at once (likely the hub's side): every Running rollout freezes until it
    # recovers (flotilla_runtime.disruption).
    FLEET_DISRUPTION = "FleetDisruption"


class Freeze(msgspec.Struct, frozen=True, kw_only=True):
    """A freeze: its reason, where it applies (the rollout, or one cluster) and since when."""

    reason: FreezeReason
    message: Text
    cluster_id: ClusterIdField | None = None
    node_id: NodeNameField | None = None
    since: Timestamp


class Failure(msgspec.Struct, frozen=True, kw_only=True):
    """A failed node or cluster, with the step and the reason."""

    cluster_id: ClusterIdField
    node_id: NodeNameField | None = None
    step: StepKind | None = None
    reason: ShortText
    message: Text = ""
    occurred_at: Timestamp


class Counts(msgspec.Struct, frozen=True, kw_only=True):
    """Clusters or nodes of a rollout by outcome."""

    total: Count = 0
    pending: Count = 0
    in_progress: Count = 0
    succeeded: Count = 0
    failed: Count = 0
    skipped: Count = 0


class RolloutSummary(msgspec.Struct, frozen=True, kw_only=True):
    """A rollout at a glance: state, freeze, wave, counts and times."""

    rollout_id: RolloutIdField
    name: ShortText = ""
    target_version: KubeVersion
    state: RolloutState
    freeze: Freeze | None = None
    current_wave: WaveIndex | None = None
    waves_total: Count = 0
    clusters: Counts = Counts()
    nodes: Counts = Counts()
    created_at: Timestamp
    started_at: Timestamp | None = None
    finished_at: Timestamp | None = None
    updated_at: Timestamp


class WaveStatus(msgspec.Struct, frozen=True, kw_only=True):
    """A wave's state and its clusters by outcome."""

    index: WaveIndex
    name: ShortText = ""
    state: WaveState
    clusters: Counts = Counts()
    requires_approval: bool = False
    approved_at: Timestamp | None = None
    soak_until: Timestamp | None = None
    started_at: Timestamp | None = None
    finished_at: Timestamp | None = None


class NodeStatus(msgspec.Struct, frozen=True, kw_only=True):
    """A node's step state in a rollout."""

    node_id: NodeNameField
    node_name: K8sName
    role: NodeRole
    state: NodeStepState
    direction: Direction = Direction.FORWARD
    step_in_flight: StepKind | None = None
    from_version: KubeVersion | None = None
    current_version: KubeVersion | None = None
    cordoned_by_us: bool = False
    attempts: Count = 0
    failure: Text = ""
    updated_at: Timestamp | None = None


class ClusterStatus(msgspec.Struct, frozen=True, kw_only=True):
    """A cluster's state in a rollout; `nodes` filled when asked for."""

    cluster_id: ClusterIdField
    wave: WaveIndex
    state: ClusterRolloutState
    from_version: KubeVersion | None = None
    target_version: KubeVersion
    nodes_total: Count = 0
    nodes_done: Count = 0
    nodes_failed: Count = 0
    nodes_unavailable: Count = 0
    freeze: Freeze | None = None
    failure: Text = ""
    # What a cluster whose nodes all finished waits for before it counts as upgraded (its inventory at the target).
    waiting: Text = ""
    window_opens_at: Timestamp | None = None
    started_at: Timestamp | None = None
    finished_at: Timestamp | None = None
    nodes: list[NodeStatus] = []


class RolloutReply(Message, frozen=True, kw_only=True):
    """A rollout after a control command; `message` says plainly what the command could and could not do."""

    SCHEMA = "upgrade.RolloutReply"

    rollout: RolloutSummary
    message: Text = ""


class ListRolloutsRequest(Message, frozen=True, kw_only=True):
    """List rollouts, newest first, optionally by state."""

    SCHEMA = "upgrade.ListRolloutsRequest"

    states: list[RolloutState] = []
    limit: Limit = DEFAULT_PAGE
    cursor: Cursor = ""


class ListRolloutsReply(Message, frozen=True, kw_only=True):
    """One page of rollouts."""

    SCHEMA = "upgrade.ListRolloutsReply"

    rollouts: list[RolloutSummary] = []
    next_cursor: Cursor = ""


class RolloutStatusRequest(Message, frozen=True, kw_only=True):
    """A rollout's full status; clusters one page at a time, with their nodes if asked."""

    SCHEMA = "upgrade.RolloutStatusRequest"

    rollout_id: RolloutIdField
    cluster_id: ClusterIdField | None = None
    include_nodes: bool = False
    limit: Limit = DEFAULT_PAGE
    cursor: Cursor = ""


class Writer(msgspec.Struct, frozen=True, kw_only=True):
    """Who writes the rollout (I6: one writer, a lease with an epoch), as the replica that answered last saw it.

    `held_here`: the replica that answered holds the lease and acts on the rollout. `fenced`: it holds a lease
    whose epoch is below the one a newer writer stored on the rollout, so it does not act. `instance_id` and
    `epoch` are the holder's ("" and the rollout's stored epoch when no live holder was seen: nobody writes
    the rollout until a replica takes the lease). `message` says it in one line.
    """

    instance_id: ShortText = ""
    epoch: Count = 0
    held_here: bool = False
    fenced: bool = False
    answered_by: ShortText = ""
    message: Text = ""


class RolloutStatusReply(Message, frozen=True, kw_only=True):
    """Waves, clusters (and nodes), failures with reasons, the freeze reason if frozen, and who writes it."""

    SCHEMA = "upgrade.RolloutStatusReply"

    rollout: RolloutSummary
    spec: RolloutSpec
    waves: list[WaveStatus] = []
    clusters: list[ClusterStatus] = []
    failures: list[Failure] = []
    next_cursor: Cursor = ""
    writer: Writer | None = None


class RolloutStarted(Message, frozen=True, kw_only=True):
    """A rollout was accepted with its spec and pinned plan."""

    SCHEMA = "upgrade.RolloutStarted"

    rollout_id: RolloutIdField
    spec: RolloutSpec
    plan: UpgradePlan
    occurred_at: Timestamp


class RolloutStateChanged(Message, frozen=True, kw_only=True):
    """A rollout moved from one state to another; `rollout` is the summary after the change."""

    SCHEMA = "upgrade.RolloutStateChanged"

    rollout: RolloutSummary
    from_: RolloutState | None = msgspec.field(default=None, name="from")
    to: RolloutState
    reason: ShortText = ""
    message: Text = ""
    occurred_at: Timestamp


class WaveStateChanged(Message, frozen=True, kw_only=True):
    """A wave moved from one state to another."""

    SCHEMA = "upgrade.WaveStateChanged"

    rollout_id: RolloutIdField
    wave: WaveStatus
    from_: WaveState | None = msgspec.field(default=None, name="from")
    to: WaveState
    reason: ShortText = ""
    message: Text = ""
    occurred_at: Timestamp


class ClusterRolloutStateChanged(Message, frozen=True, kw_only=True):
    """A cluster moved from one rollout state to another."""

    SCHEMA = "upgrade.ClusterRolloutStateChanged"

    rollout_id: RolloutIdField
    cluster_id: ClusterIdField
    wave: WaveIndex
    from_: ClusterRolloutState | None = msgspec.field(default=None, name="from")
    to: ClusterRolloutState
    reason: ShortText = ""
    message: Text = ""
    occurred_at: Timestamp


class NodeStepStateChanged(Message, frozen=True, kw_only=True):
    """A node moved from one step state to another (forward, or backward by rollback)."""

    SCHEMA = "upgrade.NodeStepStateChanged"

    rollout_id: RolloutIdField
    cluster_id: ClusterIdField
    node_id: NodeNameField
    node_name: K8sName
    from_: NodeStepState | None = msgspec.field(default=None, name="from")
    to: NodeStepState
    direction: Direction = Direction.FORWARD
    step: StepKind | None = None
    reason: ShortText = ""
    message: Text = ""
    kubelet_version: KubeVersion | None = None
    occurred_at: Timestamp


class RolloutFrozen(Message, frozen=True, kw_only=True):
    """New disruption stopped, for the whole rollout or one cluster, with the reason."""

    SCHEMA = "upgrade.RolloutFrozen"

    rollout_id: RolloutIdField
    freeze: Freeze
    occurred_at: Timestamp


class VersionDriftDetected(Message, frozen=True, kw_only=True):
    """A node of a cluster this rollout upgraded reports an older version than the rollout's target."""

    SCHEMA = "upgrade.VersionDriftDetected"

    rollout_id: RolloutIdField
    cluster_id: ClusterIdField
    node_id: NodeNameField
    node_name: K8sName
    component: ShortText  # "kubelet" or "kube-apiserver"
    reported_version: KubeVersion
    target_version: KubeVersion
    message: Text = ""
    occurred_at: Timestamp


class RolloutUnfrozen(Message, frozen=True, kw_only=True):
    """A freeze ended (its cause cleared, or resumed by a user), with the reason."""

    SCHEMA = "upgrade.RolloutUnfrozen"

    rollout_id: RolloutIdField
    freeze: Freeze
    reason: ShortText
    message: Text = ""
    occurred_at: Timestamp
