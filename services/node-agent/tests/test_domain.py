"""Pure step rules: once and forward (I4), stale epochs (I6), prerequisites, deadlines, wrong node."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flotilla_contracts.v1.agent import RefusalReason, StepKind
from flotilla_node_agent.domain import Action, JournalEntry, StepStatus, decide, is_stale, wrong_target

from .conftest import command

NOW = datetime.now(UTC)


def entry(step: StepKind, status: StepStatus = StepStatus.SUCCEEDED, attempt: int = 1) -> JournalEntry:
    return JournalEntry(step, status, f"c-{step.value}-{attempt}", 1, attempt)


def test_a_first_cordon_runs() -> None:
    assert decide(command(StepKind.CORDON), [], None, NOW).action is Action.RUN


def test_a_completed_step_is_replayed_not_repeated() -> None:
    done = [entry(StepKind.CORDON)]
    assert decide(command(StepKind.CORDON), done, 1, NOW).action is Action.REPLAY


def test_a_failed_step_is_replayed_for_the_same_attempt_and_run_again_for_a_retry() -> None:
    failed = [entry(StepKind.CORDON), entry(StepKind.DRAIN, StepStatus.FAILED)]
    assert decide(command(StepKind.DRAIN), failed, 1, NOW).action is Action.REPLAY
    assert decide(command(StepKind.DRAIN, attempt=2), failed, 1, NOW).action is Action.RUN


def test_an_interrupted_step_is_resumed_even_past_its_deadline_or_epoch() -> None:
    running = [entry(StepKind.CORDON), entry(StepKind.DRAIN, StepStatus.RUNNING)]
    late = command(StepKind.DRAIN, deadline=NOW - timedelta(seconds=1), epoch=1)
    assert decide(late, running, 5, NOW).action is Action.RESUME


def test_a_stale_epoch_is_refused() -> None:
    assert is_stale(1, 2) and not is_stale(2, 2) and not is_stale(0, None)
    decision = decide(command(StepKind.CORDON, epoch=1), [], 2, NOW)
    assert decision.action is Action.REFUSE and decision.refusal is RefusalReason.STALE_EPOCH


def test_a_newer_epoch_replays_what_an_older_writer_completed() -> None:
    assert decide(command(StepKind.CORDON, epoch=3), [entry(StepKind.CORDON)], 1, NOW).action is Action.REPLAY


def test_a_passed_deadline_is_refused() -> None:
    decision = decide(command(StepKind.CORDON, deadline=NOW - timedelta(seconds=1)), [], None, NOW)
    assert decision.refusal is RefusalReason.DEADLINE_PASSED


def test_no_upgrade_of_an_undrained_node() -> None:
    decision = decide(command(StepKind.UPGRADE), [entry(StepKind.CORDON)], 1, NOW)
    assert decision.action is Action.REFUSE and decision.refusal is RefusalReason.PRECONDITION_FAILED
    assert "drain" in decision.reason
    drained = [entry(StepKind.CORDON), entry(StepKind.DRAIN)]
    assert decide(command(StepKind.UPGRADE), drained, 1, NOW).action is Action.RUN


def test_uncordon_needs_only_the_cordon_so_a_failed_drain_can_be_undone() -> None:
    after_failed_drain = [entry(StepKind.CORDON), entry(StepKind.DRAIN, StepStatus.FAILED)]
    assert decide(command(StepKind.UNCORDON), after_failed_drain, 1, NOW).action is Action.RUN


def test_state_only_moves_forward_within_a_round() -> None:
    through = [entry(s) for s in (StepKind.CORDON, StepKind.DRAIN, StepKind.UPGRADE)]
    decision = decide(command(StepKind.DRAIN, command_id="again", attempt=1), through[:1] + through[2:], 1, NOW)
    assert decision.action is Action.REFUSE and "upgrade already succeeded" in decision.reason


def test_a_new_round_may_cordon_again_after_an_uncordon() -> None:
    round_one = [entry(StepKind.CORDON), entry(StepKind.DRAIN, StepStatus.FAILED), entry(StepKind.UNCORDON)]
    assert decide(command(StepKind.CORDON, attempt=1), round_one, 1, NOW).action is Action.REPLAY
    assert decide(command(StepKind.CORDON, attempt=2), round_one, 1, NOW).action is Action.RUN
    round_two = [*round_one, entry(StepKind.CORDON, attempt=2)]
    assert decide(command(StepKind.DRAIN, attempt=2), round_two, 1, NOW).action is Action.RUN


def test_a_command_for_another_node_is_named() -> None:
    assert wrong_target(command(), "c1", "n1") == ""
    assert "c1/n2" in wrong_target(command(node_id="n2"), "c1", "n1")
