"""The rollout's persisted state as plain mutable records: rollout, waves, clusters, nodes.

Times are POSIX seconds (floats). The engine mutates these; scheduling and rollback only read them.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field

import msgspec

from flotilla_contracts.v1 import step_order
from flotilla_contracts.v1.agent import KubeadmAction, StepKind
from flotilla_contracts.v1.common import NodeRole
from flotilla_contracts.v1.upgrade import RolloutSpec, UpgradePlan
from flotilla_contracts.v1.upgrade_status import (
    ClusterRolloutState,
    Direction,
    FreezeReason,
    NodeStepState,
    RolloutState,
    WaveState,
)

# Forward order of node states (I4; FAILED stands outside it) and the state each step leads to: from contracts.
ORDER = step_order.STATE_RANK
STATE_AFTER = step_order.STATE_AFTER
FINAL_ROLLOUT = frozenset(
    {RolloutState.SUCCEEDED, RolloutState.COMPLETED_WITH_FAILURES, RolloutState.ABORTED, RolloutState.ROLLED_BACK}
)
FINAL_WAVE = frozenset({WaveState.SUCCEEDED, WaveState.COMPLETED_WITH_FAILURES, WaveState.ABORTED})
# A cluster in one of these holds a concurrency slot (I1: maxConcurrentClusters).
ACTIVE_CLUSTER = frozenset(
    {
        ClusterRolloutState.UPGRADING_CONTROL_PLANE,
        ClusterRolloutState.UPGRADING_WORKERS,
        ClusterRolloutState.FROZEN,
        ClusterRolloutState.ROLLING_BACK,
    }
)
# Done as far as its wave is concerned.
WAVE_DONE_CLUSTER = frozenset(
    {
        ClusterRolloutState.SOAKING,
        ClusterRolloutState.SUCCEEDED,
        ClusterRolloutState.FAILED,
        ClusterRolloutState.SKIPPED,
        ClusterRolloutState.ABORTED,
        ClusterRolloutState.ROLLED_BACK,
    }
)
# States a cluster may hold while nodes of ours are still being given back.
WINDING_DOWN = frozenset({ClusterRolloutState.SKIPPED, ClusterRolloutState.ABORTED, ClusterRolloutState.FAILED})
BUDGET_FREEZES = frozenset({FreezeReason.NODE_FAILURE_BUDGET_EXCEEDED, FreezeReason.CLUSTER_FAILURE_BUDGET_EXCEEDED})


class FreezeRec(msgspec.Struct, kw_only=True):
    reason: FreezeReason
    message: str
    cluster_id: str | None = None
    node_id: str | None = None
    since: float


class NodeRec(msgspec.Struct, kw_only=True):
    """One node's progress: its state (I4), the step in flight, and what we did to it (I9)."""

    node_id: str
    node_name: str
    role: NodeRole
    order: int
    from_version: str
    kubeadm_action: KubeadmAction | None = None
    state: NodeStepState = NodeStepState.PENDING
    direction: Direction = Direction.FORWARD
    attempt: int = 1
    in_flight: StepKind | None = None
    command_id: str = ""
    issued_at: float = 0.0
    deadline: float = 0.0
    cordoned_by_us: bool = False
    pre_cordoned: bool = False
    drained: bool = False
    verified: bool = False
    current_version: str = ""
    failed_step: StepKind | None = None
    resume_state: NodeStepState | None = None
    failure: str = ""
    wind_down: bool = False
    rollback: bool = False
    rolled_back: bool = False
    updated_at: float = 0.0

    @property
    def control_plane(self) -> bool:
        return self.role is NodeRole.CONTROL_PLANE

    @property
    def succeeded(self) -> bool:
        """At the target, verified, and given back (or left cordoned as someone else had it, I9)."""
        return self.verified and not self.cordoned_by_us and self.direction is Direction.FORWARD


class ClusterRec(msgspec.Struct, kw_only=True):
    cluster_id: str
    name: str = ""
    wave: int
    order: int
    from_version: str
    target_version: str
    state: ClusterRolloutState = ClusterRolloutState.PENDING
    resume_state: ClusterRolloutState | None = None
    freeze: FreezeRec | None = None
    failure: str = ""
    not_ready: list[str] = []  # nodes seen NotReady while the cluster was active: counted against the budget
    retries: int = 0
    retry_queued: bool = False  # a user asked to retry while a failed node's cluster still settled (retries.py)
    started_at: float | None = None
    finished_at: float | None = None
    window_opens_at: float | None = None
    waiting: str = ""  # every node finished, the inventory is not at the target yet (inventory.py)
    waiting_since: float | None = None
    nodes: list[NodeRec] = []


class WaveRec(msgspec.Struct, kw_only=True):
    index: int
    name: str = ""
    state: WaveState = WaveState.PENDING
    requires_approval: bool = False
    approved_at: float | None = None
    soak_until: float | None = None
    started_at: float | None = None
    finished_at: float | None = None


class FailureRec(msgspec.Struct, kw_only=True):
    cluster_id: str
    node_id: str | None = None
    step: StepKind | None = None
    reason: str
    message: str = ""
    at: float


class RolloutRec(msgspec.Struct, kw_only=True):
    """The rollout row: its state, freeze, epoch, waves and times (clusters, nodes and the plan live apart)."""

    rollout_id: str
    name: str = ""
    request_id: str = ""
    spec: RolloutSpec
    state: RolloutState = RolloutState.RUNNING
    resume_state: RolloutState | None = None
    freeze: FreezeRec | None = None
    epoch: int = 0
    message: str = ""
    patch_level: bool = True
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    updated_at: float
    waves: list[WaveRec] = []
    trace: dict[str, str] = {}  # W3C context of the `upgrade.start` that began it: every step joins that trace


@dataclass
class Rollout:
    """A rollout in memory: its row, its pinned plan, its clusters (in wave order, nodes inside) and failures."""

    rec: RolloutRec
    plan: UpgradePlan
    clusters: dict[str, ClusterRec] = field(default_factory=dict)
    failures: list[FailureRec] = field(default_factory=list)

    @property
    def rollout_id(self) -> str:
        return self.rec.rollout_id

    @property
    def spec(self) -> RolloutSpec:
        return self.rec.spec

    @property
    def waves(self) -> list[WaveRec]:
        return self.rec.waves

    @property
    def state(self) -> RolloutState:
        return self.rec.state

    @property
    def final(self) -> bool:
        return self.rec.state in FINAL_ROLLOUT

    @property
    def rolling_back(self) -> bool:
        """Rolling back, or frozen or paused on the way back (a resume returns it to rolling back)."""
        state = self.rec.state
        held = (
            state in (RolloutState.FROZEN, RolloutState.PAUSED) and self.rec.resume_state is RolloutState.ROLLING_BACK
        )
        return state is RolloutState.ROLLING_BACK or held


def command_id(
    key: bytes, rollout_id: str, cluster_id: str, node_id: str, step: StepKind, attempt: int, direction: str
) -> str:
    """Id of one (rollout, node, step, attempt, direction): the agent's idempotency key and Nats-Msg-Id (I4).

    Keyed (HMAC-SHA256 with the orchestrator's own secret, `commands_key` in its database): the same inputs
    give the same id after a restart, but a member cannot compute the id of a command sent to another
    cluster or node, and a report must in any case come from the command's own target (senders.py).
    """
    message = f"{rollout_id}/{cluster_id}/{node_id}/{step}/{attempt}/{direction}".encode()
    return f"k{hmac.new(key, message, hashlib.sha256).hexdigest()[:40]}"
