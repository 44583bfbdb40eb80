"""The node step order in contracts: its tables (steps, state ranks, state after a step, next step) agree."""

from __future__ import annotations

from flotilla_contracts.v1.agent import StepKind
from flotilla_contracts.v1.step_order import FORWARD_STEPS, NEXT_STEP, STATE_AFTER, STATE_RANK
from flotilla_contracts.v1.upgrade_status import NodeStepState


def _states_in_order() -> list[NodeStepState]:
    return sorted(STATE_RANK, key=STATE_RANK.__getitem__)


def test_ranks_are_consecutive_from_pending_and_leave_failed_out() -> None:
    states = _states_in_order()
    assert [STATE_RANK[s] for s in states] == list(range(len(states)))
    assert states[0] is NodeStepState.PENDING
    assert set(states) == set(NodeStepState) - {NodeStepState.FAILED}


def test_every_forward_step_leads_one_state_up_the_order() -> None:
    states = _states_in_order()
    assert len(FORWARD_STEPS) == len(states) - 1 == len(set(FORWARD_STEPS))
    for i, step in enumerate(FORWARD_STEPS):
        assert STATE_AFTER[step] is states[i + 1], step


def test_the_next_step_of_a_state_is_the_one_that_leads_to_the_next_state() -> None:
    states = _states_in_order()
    assert set(NEXT_STEP) == set(states[:-1]), "every forward state but the last has a next step"
    for state, step in NEXT_STEP.items():
        assert STATE_RANK[STATE_AFTER[step]] == STATE_RANK[state] + 1, (state, step)
    assert [NEXT_STEP[s] for s in states[:-1]] == list(FORWARD_STEPS)


def test_rollback_is_the_only_step_outside_the_order_and_leaves_the_node_upgraded() -> None:
    assert set(StepKind) - set(FORWARD_STEPS) == {StepKind.ROLLBACK}
    assert set(STATE_AFTER) == set(StepKind)
    assert STATE_AFTER[StepKind.ROLLBACK] is NodeStepState.UPGRADED
