"""Pure rules of a node upgrade: step order, what a command may do given the journal, epochs (I4, I6)."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from flotilla_contracts.v1 import step_order
from flotilla_contracts.v1.agent import NodeStepCommand, RefusalReason, StepKind

# The order the orchestrator issues steps in (from contracts); rollback stands outside it (an explicit move back).
STEP_ORDER = step_order.FORWARD_STEPS

# A step needs its predecessor to have succeeded in the same rollout: no upgrade of an undrained node.
# Uncordon needs only the cordon (after a failed drain the orchestrator gives the node back).
PREREQUISITE: dict[StepKind, StepKind] = {
    StepKind.DRAIN: StepKind.CORDON,
    StepKind.UPGRADE: StepKind.DRAIN,
    StepKind.VERIFY: StepKind.UPGRADE,
    StepKind.UNCORDON: StepKind.CORDON,
}


class StepStatus(enum.StrEnum):
    """Where a (rollout, node, step) stands in the journal."""

    RUNNING = "running"  # recorded before any side effect; a crash leaves it here
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True)
class JournalEntry:
    """What the journal holds for one (rollout, node, step)."""

    step: StepKind
    status: StepStatus
    command_id: str
    epoch: int
    attempt: int


class Action(enum.StrEnum):
    RUN = "run"  # execute the step (first time, or a retry the orchestrator asked for)
    RESUME = "resume"  # the step was interrupted: re-check the node and finish it
    REPLAY = "replay"  # already done: report the recorded outcome, touch nothing
    REFUSE = "refuse"  # report a refusal, touch nothing


@dataclass(frozen=True)
class Decision:
    action: Action
    refusal: RefusalReason | None = None
    reason: str = ""


def is_stale(epoch: int, highest_seen: int | None) -> bool:
    """I6: a command from an older lease epoch than one already obeyed for this rollout is stale."""
    return highest_seen is not None and epoch < highest_seen


def latest(entries: Iterable[JournalEntry]) -> dict[StepKind, JournalEntry]:
    """The newest attempt of each step."""
    found: dict[StepKind, JournalEntry] = {}
    for entry in entries:
        if entry.step not in found or entry.attempt > found[entry.step].attempt:
            found[entry.step] = entry
    return found


def decide(
    command: NodeStepCommand,
    entries: Iterable[JournalEntry],
    highest_epoch: int | None,
    now: datetime,
) -> Decision:
    """What to do with a command, given the journal of this node in its rollout (I4: once and forward).

    The journal key is (rollout, node, step, attempt): a redelivered or duplicated command has the same
    attempt and is answered from the journal; the orchestrator opens a new round with a higher attempt.
    """
    entries = list(entries)
    same = next((e for e in entries if e.step is command.step and e.attempt == command.attempt), None)
    if same is not None and same.status is StepStatus.RUNNING:
        # We started it and crashed: the node may be half-way, so finish it whatever the deadline says.
        return Decision(Action.RESUME, reason="step was interrupted; re-checking the node and resuming")
    if is_stale(command.epoch, highest_epoch):
        return Decision(
            Action.REFUSE,
            RefusalReason.STALE_EPOCH,
            f"epoch {command.epoch} is older than epoch {highest_epoch} already obeyed for this rollout",
        )
    if same is not None:
        return Decision(Action.REPLAY, reason=f"step already {same.status.value} (attempt {same.attempt})")
    if command.deadline <= now:
        return Decision(Action.REFUSE, RefusalReason.DEADLINE_PASSED, f"deadline {command.deadline.isoformat()} passed")
    if command.step is StepKind.ROLLBACK:
        return Decision(Action.RUN)
    newest = latest(entries)
    needed = PREREQUISITE.get(command.step)
    if needed is not None:
        before = newest.get(needed)
        if before is None or before.status is not StepStatus.SUCCEEDED:
            return Decision(
                Action.REFUSE,
                RefusalReason.PRECONDITION_FAILED,
                f"{command.step.value} needs {needed.value} to have succeeded first in rollout {command.rollout_id}",
            )
    later = later_succeeded(command.step, command.attempt, newest)
    if later is not None:
        return Decision(
            Action.REFUSE,
            RefusalReason.PRECONDITION_FAILED,
            f"{later.value} already succeeded in this round; node state only moves forward",
        )
    return Decision(Action.RUN)


def later_succeeded(step: StepKind, attempt: int, newest: Mapping[StepKind, JournalEntry]) -> StepKind | None:
    """A step after `step` in the order that succeeded in this round (attempt) or a later one, if any."""
    if step not in STEP_ORDER:
        return None
    for later in STEP_ORDER[STEP_ORDER.index(step) + 1 :]:
        entry = newest.get(later)
        if entry is not None and entry.status is StepStatus.SUCCEEDED and entry.attempt >= attempt:
            return later
    return None


def wrong_target(command: NodeStepCommand, cluster_id: str, node_id: str) -> str:
    """Empty when the command is for this node; the reason otherwise."""
    if command.cluster_id != cluster_id or command.node_id != node_id:
        return f"command for {command.cluster_id}/{command.node_id} reached the agent of {cluster_id}/{node_id}"
    return ""
