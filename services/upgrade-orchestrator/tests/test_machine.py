"""The transition tables: complete, every state reachable, illegal moves refused, and moves seen in scenarios."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from enum import StrEnum

import pytest
from orchestrator_harness import Sim

from flotilla_contracts.v1.upgrade import AbortRolloutRequest, RolloutSpec
from flotilla_contracts.v1.upgrade_status import (
    ClusterRolloutState,
    NodeStepState,
    RolloutState,
    WaveState,
)
from flotilla_upgrade_orchestrator import control, machine

TABLES: list[tuple[str, Mapping[StrEnum, frozenset[StrEnum]], type[StrEnum], StrEnum]] = [
    ("rollout", machine.ROLLOUT, RolloutState, RolloutState.PENDING),  # type: ignore[list-item]
    ("wave", machine.WAVE, WaveState, WaveState.PENDING),  # type: ignore[list-item]
    ("cluster", machine.CLUSTER, ClusterRolloutState, ClusterRolloutState.PENDING),  # type: ignore[list-item]
    ("node", machine.NODE, NodeStepState, NodeStepState.PENDING),  # type: ignore[list-item]
]


def _reachable(table: Mapping[StrEnum, frozenset[StrEnum]], start: StrEnum) -> set[StrEnum]:
    seen, todo = {start}, deque([start])
    while todo:
        for nxt in table[todo.popleft()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


@pytest.mark.parametrize(("name", "table", "states", "start"), TABLES, ids=[t[0] for t in TABLES])
def test_every_state_has_a_row_and_is_reachable_from_the_start(
    name: str, table: Mapping[StrEnum, frozenset[StrEnum]], states: type[StrEnum], start: StrEnum
) -> None:
    assert set(table) == set(states), f"{name}: the table's rows are not the contract's states"
    assert _reachable(table, start) == set(states), f"{name}: a state no move reaches"
    for before, targets in table.items():
        assert before not in targets, f"{name}: {before} -> itself is not a transition"


def test_the_node_table_is_designs_forward_order_and_failed() -> None:
    # DESIGN.md I4: Pending, Cordoned, Drained, Upgraded, Verified, Uncordoned, or Failed; forward only.
    order = ["Pending", "Cordoned", "Drained", "Upgraded", "Verified", "Uncordoned"]
    assert [s.value for s in NodeStepState if s is not NodeStepState.FAILED] == order
    for before, targets in machine.NODE.items():
        for to in targets - {NodeStepState.FAILED}:
            assert order.index(to.value) > order.index(before.value), f"{before} -> {to} moves backwards"


def test_every_rollout_that_has_not_ended_can_still_end() -> None:
    ends = {
        RolloutState.SUCCEEDED,
        RolloutState.COMPLETED_WITH_FAILURES,
        RolloutState.ABORTED,
        RolloutState.ROLLED_BACK,
    }
    for state in RolloutState:
        assert _reachable(machine.ROLLOUT, state) & ends, f"{state} can never end"


def test_a_move_outside_the_table_is_refused_and_the_work_rolled_back(sim: Sim) -> None:
    sim.add_cluster("c0", cps=1, workers=1)
    rid = sim.start(RolloutSpec(target_version="v1.30.4"))
    sim.run()
    rollout = sim.engine.rollouts[rid]
    assert rollout.state is RolloutState.SUCCEEDED
    with pytest.raises(machine.IllegalTransition, match="Succeeded -> Running"):
        sim.work(lambda tx: sim.engine.rollout_to(tx, rollout, RolloutState.RUNNING, sim.now))
    assert sim.engine.rollouts[rid].state is RolloutState.SUCCEEDED  # reloaded: nothing was written


def test_aborting_a_frozen_rollout_is_one_transition(sim: Sim) -> None:
    sim.add_cluster("c0", cps=1, workers=2)
    sim.nodes[("c0", "c0-w1")].fail_steps = {"upgrade"}
    rid = sim.start(RolloutSpec(target_version="v1.30.4"))
    sim.run()
    assert sim.engine.rollouts[rid].state is RolloutState.FROZEN
    sim.work(lambda tx: control.abort(sim.engine, tx, AbortRolloutRequest(rollout_id=rid), sim.now))
    moves = [(b["from"], b["to"]) for _, s, b in sim.events if s == "upgrade.RolloutStateChanged/v1"]
    assert moves[-1] == ("Frozen", "Aborted")
    assert ("Frozen", "Running") not in moves
    assert "upgrade.RolloutUnfrozen/v1" in sim.schemas()  # the freeze's end is still announced


def test_every_move_in_the_scenarios_is_in_the_tables(sim: Sim) -> None:
    """The event log of a rollout with approval, soak, a failure, abort: each move is a table entry."""
    sim.add_cluster("c0", cps=2, workers=2)
    sim.add_cluster("c1", cps=1, workers=2)
    sim.nodes[("c1", "c1-w2")].fail_steps = {"drain"}
    rid = sim.start(RolloutSpec(target_version="v1.30.4", soak_s=10, max_concurrent_clusters=2))
    sim.run()
    sim.tick(20)
    sim.work(lambda tx: control.abort(sim.engine, tx, AbortRolloutRequest(rollout_id=rid), sim.now))
    sim.run()
    tables = {
        "upgrade.RolloutStateChanged/v1": (machine.ROLLOUT, RolloutState),
        "upgrade.WaveStateChanged/v1": (machine.WAVE, WaveState),
        "upgrade.ClusterRolloutStateChanged/v1": (machine.CLUSTER, ClusterRolloutState),
        "upgrade.NodeStepStateChanged/v1": (machine.NODE, NodeStepState),
    }
    seen = 0
    for _, schema, body in sim.events:
        if schema not in tables or body.get("from") is None:
            continue
        table, states = tables[schema]
        before, to = states(body["from"]), states(body["to"])  # type: ignore[call-arg]
        if before is not to:
            assert to in table[before], f"{schema}: {before} -> {to}"  # type: ignore[index,operator]
            seen += 1
    assert seen > 20
