"""Upgrade rollouts: the spec, the plan (dry run), and the commands that start and steer a rollout.

Status replies, state enums and rollout events are in `upgrade_status`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import msgspec

from flotilla_contracts.envelope import Message
from flotilla_contracts.ids import ClusterIdField, NodeNameField, RequestIdField, RolloutIdField
from flotilla_contracts.v1.agent import DrainOptions, KubeadmAction, StepKind
from flotilla_contracts.v1.common import (
    K8sName,
    KubeVersion,
    NodeRole,
    Seconds,
    Selector,
    ShortText,
    Text,
)

Count = Annotated[int, msgspec.Meta(ge=0)]
Percent = Annotated[int, msgspec.Meta(ge=1, le=100)]
WaveIndex = Annotated[int, msgspec.Meta(ge=0, description="Wave number, 0 first (the canary)")]
HHMM = Annotated[str, msgspec.Meta(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", description="HH:MM")]


class LabelStage(msgspec.Struct, frozen=True, kw_only=True):
    """A wave made of the clusters matching a selector (clusters already in an earlier stage excluded)."""

    name: ShortText
    selector: Selector


class WavesSpec(msgspec.Struct, frozen=True, kw_only=True):
    """How clusters are split into waves: label stages, or a canary count then cumulative percentages.

    With `stages`, the waves are the stages in order. Otherwise wave 0 holds `canary_clusters` clusters
    and each later wave brings the share of clusters upgraded to the next percentage (cumulative,
    rising, the last 100); no percentages: every other cluster in wave 1.
    """

    canary_clusters: Count = 1
    percentages: Annotated[list[Percent], msgspec.Meta(max_length=20)] = []
    stages: Annotated[list[LabelStage], msgspec.Meta(max_length=20)] = []


class HealthGates(msgspec.Struct, frozen=True, kw_only=True):
    """What must hold for a cluster to count as done and for the next wave to start."""

    cluster_ready_through_soak: bool = True
    api_servers_ready: bool = True
    nodes_ready_after_verify: bool = True
    verify_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 600.0


class FailureBudget(msgspec.Struct, frozen=True, kw_only=True):
    """How many failed nodes and clusters a rollout absorbs before it freezes (I7)."""

    max_failed_nodes: Count = 0
    max_failed_clusters: Count = 0


class Weekday(StrEnum):
    """Days of the week for maintenance windows."""

    MON = "Mon"
    TUE = "Tue"
    WED = "Wed"
    THU = "Thu"
    FRI = "Fri"
    SAT = "Sat"
    SUN = "Sun"


class MaintenanceWindow(msgspec.Struct, frozen=True, kw_only=True):
    """When clusters matching `selector` may be disrupted; a cluster matching no window is always open."""

    selector: Selector
    days: Annotated[list[Weekday], msgspec.Meta(max_length=7)] = []  # empty: every day
    start: HHMM
    duration_s: Annotated[float, msgspec.Meta(gt=0, le=7 * 86400)]
    timezone: Annotated[str, msgspec.Meta(max_length=64, description="IANA time zone name")] = "UTC"


class RolloutSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a rollout is asked to do; the same spec drives `upgrade.plan` and `upgrade.start`."""

    target_version: KubeVersion
    selector: Selector = ""
    name: ShortText = ""
    waves: WavesSpec = WavesSpec()
    max_concurrent_clusters: Annotated[int, msgspec.Meta(ge=1)] = 1
    max_unavailable: Annotated[int, msgspec.Meta(ge=1, description="Per cluster, nodes")] = 1
    drain: DrainOptions = DrainOptions()
    soak_s: Seconds = 0.0
    health_gates: HealthGates = HealthGates()
    failure_budget: FailureBudget = FailureBudget()
    maintenance_windows: Annotated[list[MaintenanceWindow], msgspec.Meta(max_length=64)] = []
    approval_before_waves: Annotated[list[WaveIndex], msgspec.Meta(max_length=20)] = []
    # A pre-release target (v1.38.0-rc.1, -beta.0, -alpha.2) is refused unless this is set; kubeadm then runs
    # with --allow-release-candidate-upgrades (rc) or --allow-experimental-upgrades (alpha, beta).
    allow_pre_release: bool = False


class SkewRule(StrEnum):
    """The Kubernetes version skew rules the planner checks (I3)."""

    KNOWN_VERSION = "KnownVersion"
    NO_DOWNGRADE = "NoDowngrade"
    CONTROL_PLANE_ONE_MINOR = "ControlPlaneOneMinor"
    KUBELET_NOT_NEWER_THAN_API_SERVER = "KubeletNotNewerThanApiServer"
    KUBELET_MAX_MINOR_LAG = "KubeletMaxMinorLag"
    KUBE_PROXY_NOT_NEWER_THAN_API_SERVER = "KubeProxyNotNewerThanApiServer"
    KUBE_PROXY_MAX_MINOR_LAG = "KubeProxyMaxMinorLag"


class SkewCheck(msgspec.Struct, frozen=True, kw_only=True):
    """One skew rule checked for a cluster (or one of its nodes), passed or not."""

    rule: SkewRule
    cluster_id: ClusterIdField
    node_id: NodeNameField | None = None
    ok: bool
    detail: Text = ""


class RefusalReason(StrEnum):
    """Why the planner will not move a cluster (or the whole rollout)."""

    SKIPS_MINOR = "SkipsMinor"
    KUBELET_TOO_OLD = "KubeletTooOld"
    DOWNGRADE = "Downgrade"
    UNKNOWN_VERSION = "UnknownVersion"
    CLUSTER_UNREACHABLE = "ClusterUnreachable"
    CLUSTER_NOT_APPROVED = "ClusterNotApproved"
    IN_ANOTHER_ROLLOUT = "InAnotherRollout"
    INVALID_SPEC = "InvalidSpec"
    # Nodes already unavailable hold the whole max_unavailable while other nodes still have to be taken out (I1).
    BUDGET_HELD = "BudgetHeldByUnavailableNodes"
    KUBE_PROXY_SKEW = "KubeProxySkew"


class Refusal(msgspec.Struct, frozen=True, kw_only=True):
    """A refusal with its reason; no `cluster_id` means the whole plan is refused."""

    reason: RefusalReason
    cluster_id: ClusterIdField | None = None
    node_id: NodeNameField | None = None
    message: Text


class PlannedNode(msgspec.Struct, frozen=True, kw_only=True):
    """A node's place in its cluster's order, and the steps it will go through."""

    node_id: NodeNameField
    node_name: K8sName
    role: NodeRole
    order: Count
    from_version: KubeVersion
    kubeadm_action: KubeadmAction | None = None
    steps: list[StepKind] = []


class PlannedCluster(msgspec.Struct, frozen=True, kw_only=True):
    """A cluster in the plan: control-plane nodes first, one at a time (I2), then workers."""

    cluster_id: ClusterIdField
    name: ShortText = ""
    from_version: KubeVersion
    target_version: KubeVersion
    control_plane: list[PlannedNode] = []
    workers: list[PlannedNode] = []
    skew_checks: list[SkewCheck] = []
    estimated_duration_s: Seconds = 0.0


class PlannedWave(msgspec.Struct, frozen=True, kw_only=True):
    """A wave of clusters and whether it waits for an approval first."""

    index: WaveIndex
    name: ShortText = ""
    clusters: list[PlannedCluster] = []
    requires_approval: bool = False
    estimated_duration_s: Seconds = 0.0


class UpgradePlan(msgspec.Struct, frozen=True, kw_only=True):
    """What a rollout would do; `feasible` false when a refusal stops the whole plan."""

    target_version: KubeVersion
    feasible: bool
    waves: list[PlannedWave] = []
    refusals: list[Refusal] = []
    up_to_date: list[ClusterIdField] = []
    clusters_total: Count = 0
    nodes_total: Count = 0
    estimated_duration_s: Seconds = 0.0
    # Things a person should read before starting (e.g. a pre-release target); they do not stop the plan.
    warnings: Annotated[list[Text], msgspec.Meta(max_length=20)] = []


class PlanRequest(Message, frozen=True, kw_only=True):
    """Dry run: what would this rollout do? Nothing moves."""

    SCHEMA = "upgrade.PlanRequest"

    spec: RolloutSpec


class PlanReply(Message, frozen=True, kw_only=True):
    """The plan, with its skew checks, refusals and estimate."""

    SCHEMA = "upgrade.PlanReply"

    plan: UpgradePlan


class StartRolloutRequest(Message, frozen=True, kw_only=True):
    """Start a rollout; refused before anything moves if the plan is not feasible. Repeats are safe."""

    SCHEMA = "upgrade.StartRolloutRequest"

    request_id: RequestIdField
    spec: RolloutSpec


class StartRolloutReply(Message, frozen=True, kw_only=True):
    """The new rollout's id and the plan it pinned."""

    SCHEMA = "upgrade.StartRolloutReply"

    rollout_id: RolloutIdField
    plan: UpgradePlan


class PauseRolloutRequest(Message, frozen=True, kw_only=True):
    """Stop starting new disruption; steps in flight finish."""

    SCHEMA = "upgrade.PauseRolloutRequest"

    rollout_id: RolloutIdField
    reason: Text = ""


class ResumeRolloutRequest(Message, frozen=True, kw_only=True):
    """Continue a paused or frozen rollout (a freeze whose cause persists freezes again)."""

    SCHEMA = "upgrade.ResumeRolloutRequest"

    rollout_id: RolloutIdField


class AbortRolloutRequest(Message, frozen=True, kw_only=True):
    """End a rollout: steps in flight finish, cordoned nodes are uncordoned, nothing new starts."""

    SCHEMA = "upgrade.AbortRolloutRequest"

    rollout_id: RolloutIdField
    reason: Text = ""


class ApproveWaveRequest(Message, frozen=True, kw_only=True):
    """Let a wave that waits for manual approval start."""

    SCHEMA = "upgrade.ApproveWaveRequest"

    rollout_id: RolloutIdField
    wave: WaveIndex


class RetryRequest(Message, frozen=True, kw_only=True):
    """Try failed clusters again (all, or one), against the rollout's pinned target."""

    SCHEMA = "upgrade.RetryRequest"

    rollout_id: RolloutIdField
    cluster_id: ClusterIdField | None = None


class SkipClusterRequest(Message, frozen=True, kw_only=True):
    """Leave a cluster out of the rest of the rollout."""

    SCHEMA = "upgrade.SkipClusterRequest"

    rollout_id: RolloutIdField
    cluster_id: ClusterIdField
    reason: Text = ""


class RollbackRequest(Message, frozen=True, kw_only=True):
    """Stop the rollout and return upgraded nodes to their previous version where that is possible."""

    SCHEMA = "upgrade.RollbackRequest"

    rollout_id: RolloutIdField
    reason: Text = ""
