"""What a decision asks for: the intents `decide` returns and the engine's applier carries out, in order.

An intent names what it changes by ids, never by object, so a decision can be printed, compared and tested
without an engine. Moves (`NodeTo`, `ClusterTo`, `WaveTo`, `RolloutTo`) are checked against machine.py's
tables when applied; `Set*` intents change fields that are not states (times, counters, flags), each named
in `changes` as the record's own field name. The applier records every change, emits the event each move
announces and sends each command, all in the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flotilla_contracts.envelope import Message
from flotilla_contracts.errors import ErrorCode
from flotilla_contracts.v1.agent import StepKind
from flotilla_contracts.v1.upgrade_status import (
    ClusterRolloutState,
    FreezeReason,
    NodeStepState,
    RolloutState,
    WaveState,
)
from flotilla_upgrade_orchestrator.model import FailureRec


@dataclass(frozen=True, slots=True)
class NodeTo:
    """Move a node (I4): forward, as a new attempt (`retry`), or back when its direction is rollback."""

    cluster_id: str
    node_id: str
    to: NodeStepState
    step: StepKind | None = None
    reason: str = ""
    message: str = ""
    kubelet: str | None = None
    retry: bool = False


@dataclass(frozen=True, slots=True)
class SetNode:
    cluster_id: str
    node_id: str
    changes: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Answered:
    """The node's step in flight got its final report: nothing is in flight on it any more."""

    cluster_id: str
    node_id: str


@dataclass(frozen=True, slots=True)
class ClusterTo:
    cluster_id: str
    to: ClusterRolloutState
    reason: str = ""
    message: str = ""


@dataclass(frozen=True, slots=True)
class SetCluster:
    cluster_id: str
    changes: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class WaveTo:
    index: int
    to: WaveState
    reason: str = ""


@dataclass(frozen=True, slots=True)
class SetWave:
    index: int
    changes: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class RolloutTo:
    to: RolloutState
    reason: str = ""
    message: str = ""


@dataclass(frozen=True, slots=True)
class SetRollout:
    changes: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Freeze:
    """Stop all new disruption in the rollout (I7); a Running rollout becomes Frozen, a Paused one keeps it."""

    reason: FreezeReason
    message: str
    cluster_id: str | None = None
    node_id: str | None = None


@dataclass(frozen=True, slots=True)
class Unfreeze:
    """End the rollout's freeze; `resume`: a Frozen rollout goes back to what it did (else the caller moves it)."""

    reason: str
    message: str
    resume: bool = True


@dataclass(frozen=True, slots=True)
class FreezeCluster:
    cluster_id: str
    reason: FreezeReason
    message: str
    node_id: str | None = None


@dataclass(frozen=True, slots=True)
class UnfreezeCluster:
    cluster_id: str
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class Issue:
    """Send the node its next step (a NodeStepCommand, at most once per attempt and direction: I4, I8)."""

    cluster_id: str
    node_id: str
    step: StepKind


@dataclass(frozen=True, slots=True)
class Resend:
    """Send the node's step in flight again at the rollout's new epoch (failover.py)."""

    cluster_id: str
    node_id: str
    epoch: int


@dataclass(frozen=True, slots=True)
class Fail:
    """Keep a failure in the rollout's record (status shows the latest)."""

    failure: FailureRec


@dataclass(frozen=True, slots=True)
class Emit:
    """Announce an event that no move announces by itself (e.g. a version drift)."""

    message: Message
    ids: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SetKubelet:
    """The orchestrator's read model of the fleet takes a node's kubelet version from its verify report."""

    cluster_id: str
    node_id: str
    version: str


@dataclass(frozen=True, slots=True)
class MarkActive:
    """Something happened in the rollout: the no-progress clock (stall.py) starts again."""


@dataclass(frozen=True, slots=True)
class Note:
    """A line for the log, with the rollout's (and the cluster's, node's) ids."""

    level: str
    text: str
    cluster_id: str | None = None
    node_id: str | None = None


@dataclass(frozen=True, slots=True)
class Refuse:
    """The command is refused: nothing else is applied, the caller gets `code` and `message`."""

    code: ErrorCode
    message: str
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Reply:
    """What the command's reply says (the last one wins)."""

    message: str


Intent = (
    NodeTo
    | SetNode
    | Answered
    | ClusterTo
    | SetCluster
    | WaveTo
    | SetWave
    | RolloutTo
    | SetRollout
    | Freeze
    | Unfreeze
    | FreezeCluster
    | UnfreezeCluster
    | Issue
    | Resend
    | Fail
    | Emit
    | SetKubelet
    | MarkActive
    | Note
    | Refuse
    | Reply
)
