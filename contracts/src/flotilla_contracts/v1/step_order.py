"""The forward order of a node upgrade (DESIGN.md I4), written once for the orchestrator and the node-agent.

Constants, not messages: the steps in the order the orchestrator issues them, the node state each step leads
to, and the step that follows each state. FAILED stands outside the order; ROLLBACK is the one explicit move
backward (it leaves the node Upgraded, on its previous version). tests/contract/test_step_order.py checks that
the tables agree with each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from flotilla_contracts.v1.agent import StepKind
from flotilla_contracts.v1.upgrade_status import NodeStepState

# The steps in the order the orchestrator issues them and the node-agent accepts them.
FORWARD_STEPS: tuple[StepKind, ...] = (
    StepKind.CORDON,
    StepKind.DRAIN,
    StepKind.UPGRADE,
    StepKind.VERIFY,
    StepKind.UNCORDON,
)

# Each forward state's rank: node state only moves up this order, down only by an explicit rollback.
STATE_RANK: Mapping[NodeStepState, int] = MappingProxyType(
    {
        NodeStepState.PENDING: 0,
        NodeStepState.CORDONED: 1,
        NodeStepState.DRAINED: 2,
        NodeStepState.UPGRADED: 3,
        NodeStepState.VERIFIED: 4,
        NodeStepState.UNCORDONED: 5,
    }
)

# The state a node is in once a step has succeeded.
STATE_AFTER: Mapping[StepKind, NodeStepState] = MappingProxyType(
    {
        StepKind.CORDON: NodeStepState.CORDONED,
        StepKind.DRAIN: NodeStepState.DRAINED,
        StepKind.UPGRADE: NodeStepState.UPGRADED,
        StepKind.VERIFY: NodeStepState.VERIFIED,
        StepKind.UNCORDON: NodeStepState.UNCORDONED,
        StepKind.ROLLBACK: NodeStepState.UPGRADED,
    }
)

# The forward step after each state; none after Uncordoned (done) or Failed (outside the order).
NEXT_STEP: Mapping[NodeStepState, StepKind] = MappingProxyType(
    {
        NodeStepState.PENDING: StepKind.CORDON,
        NodeStepState.CORDONED: StepKind.DRAIN,
        NodeStepState.DRAINED: StepKind.UPGRADE,
        NodeStepState.UPGRADED: StepKind.VERIFY,
        NodeStepState.VERIFIED: StepKind.UNCORDON,
    }
)
