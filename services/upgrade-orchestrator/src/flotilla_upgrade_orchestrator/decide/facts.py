"""What `decide` is told: a command, an agent's report, a health or inventory event, the clock, or a
follow-up a decision asked for (`Advance`, `Gates`, ...). Every input of the engine is one of these."""

from __future__ import annotations

from dataclasses import dataclass, field

from flotilla_contracts.v1.agent import NodeStepReported
from flotilla_contracts.v1.heartbeat import ClusterHealthChanged, NodeHealthChanged
from flotilla_contracts.v1.upgrade import (
    AbortRolloutRequest,
    ApproveWaveRequest,
    PauseRolloutRequest,
    ResumeRolloutRequest,
    RetryRequest,
    RollbackRequest,
    SkipClusterRequest,
)
from flotilla_upgrade_orchestrator.decide.intents import Intent
from flotilla_upgrade_orchestrator.fleet import FleetNode

# --- follow-ups: what a decision asks to look at next --------------------------------------------------


@dataclass(frozen=True, slots=True)
class Advance:
    """Move the rollout as far as it can go; `only`: one cluster's work, unless that cluster settles
    (`settled`: it left its working state in an earlier pass); `stage`: the rollout-wide stage to go on
    from (progress.STAGES; 0 settles every cluster first)."""

    only: str | None = None
    settled: bool = False
    stage: int = 0


@dataclass(frozen=True, slots=True)
class Gates:
    """Failure budgets and health gates (I7)."""


@dataclass(frozen=True, slots=True)
class LiftBudgetFreeze:
    """A retry or a skip may have brought the rollout back within its failure budget."""

    reason: str


@dataclass(frozen=True, slots=True)
class Stall:
    """Has the rollout been idle for the no-progress time, waiting on nothing that ends by itself?"""


# --- the world --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Report:
    """An agent's final report on the command in flight to this node (ACCEPTED/PROGRESS never get here)."""

    report: NodeStepReported
    cluster_id: str
    node_id: str


@dataclass(frozen=True, slots=True)
class NodeHealth:
    event: NodeHealthChanged


@dataclass(frozen=True, slots=True)
class ClusterHealth:
    event: ClusterHealthChanged


@dataclass(frozen=True, slots=True)
class Inventory:
    """A node's inventory changed: `node` as the fleet now reports it, `moved` the components whose version moved."""

    cluster_id: str
    node: FleetNode
    moved: frozenset[str]


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed: step deadlines, soak ends, windows opening, no progress."""


@dataclass(frozen=True, slots=True)
class TakeOver:
    """The lease gave us the rollout at `epoch`, newer than its row's: re-send what is in flight."""

    epoch: int


# --- commands ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Started:
    message: str


@dataclass(frozen=True, slots=True)
class Pause:
    request: PauseRolloutRequest
    actor: str = ""  # who sent it (a person's name, `admin`), for the reason people read


@dataclass(frozen=True, slots=True)
class Resume:
    request: ResumeRolloutRequest
    actor: str = ""  # who sent it (a person's name, `admin`), for the reason people read


@dataclass(frozen=True, slots=True)
class Abort:
    request: AbortRolloutRequest


@dataclass(frozen=True, slots=True)
class Approve:
    request: ApproveWaveRequest


@dataclass(frozen=True, slots=True)
class Retry:
    request: RetryRequest


@dataclass(frozen=True, slots=True)
class Skip:
    request: SkipClusterRequest
    actor: str = ""  # who sent it (a person's name, `admin`), for the reason people read


@dataclass(frozen=True, slots=True)
class Rollback:
    request: RollbackRequest


Command = Started | Pause | Resume | Abort | Approve | Retry | Skip | Rollback
Fact = (
    Advance
    | Gates
    | LiftBudgetFreeze
    | Stall
    | Report
    | NodeHealth
    | ClusterHealth
    | Inventory
    | Tick
    | TakeOver
    | Command
)


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do (`intents`, applied in order) and what to look at next (`then`, decided after applying)."""

    intents: list[Intent] = field(default_factory=list)
    then: tuple[Fact, ...] = ()
