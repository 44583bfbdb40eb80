"""The allowed transitions of rollouts, waves, clusters and nodes, as tables, in one place.

Every move the engine records goes through `transitions.py`, which checks it here first: a move that is
not in its table raises `IllegalTransition` (a bug in the orchestrator, never a silent move). The tables
are the states of docs/upgrade-orchestrator.md and DESIGN.md (I4 for nodes); tests/test_machine.py checks
that every entry is reachable and that the scenarios use them.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import TypeVar

from flotilla_contracts.v1.upgrade_status import ClusterRolloutState, NodeStepState, RolloutState, WaveState

R = RolloutState
W = WaveState
C = ClusterRolloutState
N = NodeStepState
S = TypeVar("S", bound=StrEnum)

ROLLOUT: dict[RolloutState, frozenset[RolloutState]] = {
    R.PENDING: frozenset({R.RUNNING}),
    R.RUNNING: frozenset(
        {R.AWAITING_APPROVAL, R.PAUSED, R.FROZEN, R.ROLLING_BACK, R.SUCCEEDED, R.COMPLETED_WITH_FAILURES, R.ABORTED}
    ),
    R.AWAITING_APPROVAL: frozenset({R.RUNNING, R.PAUSED, R.FROZEN, R.ROLLING_BACK, R.ABORTED}),
    # A freeze ends by resume (back to what it was doing), pause, abort or rollback.
    R.FROZEN: frozenset({R.RUNNING, R.AWAITING_APPROVAL, R.PAUSED, R.ROLLING_BACK, R.ABORTED}),
    R.PAUSED: frozenset({R.RUNNING, R.AWAITING_APPROVAL, R.ROLLING_BACK, R.ABORTED}),
    # Finished with failures: `retry` or `skip` runs it again; a rollback is possible from every end but one.
    R.COMPLETED_WITH_FAILURES: frozenset({R.RUNNING, R.ROLLING_BACK}),
    R.SUCCEEDED: frozenset({R.ROLLING_BACK}),
    R.ABORTED: frozenset({R.ROLLING_BACK}),
    # A rollback that stalls freezes (NoProgress) and a resume sends it back to rolling back.
    R.ROLLING_BACK: frozenset({R.ROLLED_BACK, R.FROZEN}),
    R.ROLLED_BACK: frozenset(),
}

WAVE: dict[WaveState, frozenset[WaveState]] = {
    W.PENDING: frozenset({W.AWAITING_APPROVAL, W.RUNNING, W.ABORTED}),
    W.AWAITING_APPROVAL: frozenset({W.RUNNING, W.ABORTED}),
    W.RUNNING: frozenset({W.SOAKING, W.SUCCEEDED, W.COMPLETED_WITH_FAILURES, W.ABORTED}),
    W.SOAKING: frozenset({W.SUCCEEDED, W.COMPLETED_WITH_FAILURES, W.ABORTED}),
    W.SUCCEEDED: frozenset(),
    W.COMPLETED_WITH_FAILURES: frozenset({W.RUNNING}),  # a retry or a skip of its failed cluster
    W.ABORTED: frozenset(),
}

_UPGRADING_NEXT = frozenset({C.FAILED, C.SOAKING, C.SUCCEEDED, C.FROZEN, C.SKIPPED, C.ABORTED, C.ROLLING_BACK})
CLUSTER: dict[ClusterRolloutState, frozenset[ClusterRolloutState]] = {
    C.PENDING: frozenset(
        {C.WAITING_WINDOW, C.UPGRADING_CONTROL_PLANE, C.UPGRADING_WORKERS, C.SKIPPED, C.ABORTED, C.ROLLING_BACK}
    ),
    C.WAITING_WINDOW: frozenset({C.PENDING, C.SKIPPED, C.ABORTED, C.ROLLING_BACK}),
    C.UPGRADING_CONTROL_PLANE: _UPGRADING_NEXT | {C.UPGRADING_WORKERS},
    C.UPGRADING_WORKERS: _UPGRADING_NEXT,
    C.SOAKING: frozenset({C.SUCCEEDED, C.ROLLING_BACK}),
    # A cluster freeze ends where the cluster was (or where a rollback sent it), or by skip or abort.
    C.FROZEN: frozenset({C.UPGRADING_CONTROL_PLANE, C.UPGRADING_WORKERS, C.ROLLING_BACK, C.SKIPPED, C.ABORTED}),
    C.SUCCEEDED: frozenset({C.ROLLING_BACK}),
    C.FAILED: frozenset({C.PENDING, C.SKIPPED, C.ROLLING_BACK}),  # retry, skip, rollback
    C.SKIPPED: frozenset({C.ROLLING_BACK}),
    C.ROLLING_BACK: frozenset({C.ROLLED_BACK, C.FAILED, C.FROZEN}),
    C.ROLLED_BACK: frozenset(),
    C.ABORTED: frozenset({C.ROLLING_BACK}),
}

# Forward (I4): each step's success moves one state on; any step can fail; a node given back early (an
# abort, a skip, a failure next to it) is uncordoned from where it stood.
NODE: dict[NodeStepState, frozenset[NodeStepState]] = {
    N.PENDING: frozenset({N.CORDONED, N.FAILED}),
    N.CORDONED: frozenset({N.DRAINED, N.UNCORDONED, N.FAILED}),
    N.DRAINED: frozenset({N.UPGRADED, N.UNCORDONED, N.FAILED}),
    N.UPGRADED: frozenset({N.VERIFIED, N.FAILED}),
    N.VERIFIED: frozenset({N.UNCORDONED, N.FAILED}),
    N.UNCORDONED: frozenset({N.FAILED}),
    N.FAILED: frozenset(),
}
# A retry (a new attempt) starts a node again: from Pending, or from where it failed if it is still ours.
NODE_RETRY: dict[NodeStepState, frozenset[NodeStepState]] = {
    N.FAILED: frozenset({N.PENDING, N.CORDONED, N.DRAINED, N.UPGRADED, N.VERIFIED}),
    N.UNCORDONED: frozenset({N.PENDING}),
    N.CORDONED: frozenset({N.PENDING}),
    N.DRAINED: frozenset({N.PENDING}),
}
# A rollback (the only way back, I4) takes an upgraded node out again, returns it and gives it back.
NODE_ROLLBACK: dict[NodeStepState, frozenset[NodeStepState]] = {
    N.UPGRADED: frozenset({N.CORDONED, N.DRAINED, N.UNCORDONED, N.FAILED}),
    N.VERIFIED: frozenset({N.CORDONED, N.DRAINED, N.UPGRADED, N.FAILED}),
    N.UNCORDONED: frozenset({N.CORDONED, N.FAILED}),
    N.CORDONED: frozenset({N.DRAINED, N.FAILED}),
    N.DRAINED: frozenset({N.UPGRADED, N.FAILED}),
    # An upgraded node that failed later (verify, uncordon) is returned from where it failed.
    N.FAILED: frozenset({N.UPGRADED, N.VERIFIED, N.UNCORDONED}),
}


class IllegalTransition(RuntimeError):
    """A move no table allows: a bug in the orchestrator. The work that tried it is rolled back."""

    def __init__(self, entity: str, ident: str, before: StrEnum, to: StrEnum) -> None:
        super().__init__(f"illegal {entity} transition {before.value} -> {to.value} ({ident})")
        self.entity, self.ident, self.before, self.to = entity, ident, before, to


def check(table: Mapping[S, frozenset[S]], entity: str, ident: str, before: S, to: S) -> None:
    """Raise IllegalTransition unless `before -> to` is in `table` (staying put is not a transition)."""
    if before is not to and to not in table.get(before, frozenset()):
        raise IllegalTransition(entity, ident, before, to)
