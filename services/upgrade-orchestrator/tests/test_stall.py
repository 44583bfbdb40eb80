"""No silent stall: nodes already unavailable before or during a rollout, the plan's refusal and NoProgress."""

from __future__ import annotations

import pytest
from orchestrator_harness import Sim, facts

from flotilla_contracts.errors import ErrorCode
from flotilla_contracts.v1.agent import StepKind
from flotilla_contracts.v1.heartbeat import NodeHealth
from flotilla_contracts.v1.upgrade import (
    AbortRolloutRequest,
    ResumeRolloutRequest,
    RetryRequest,
    RollbackRequest,
    RolloutSpec,
)
from flotilla_contracts.v1.upgrade_status import ClusterRolloutState, FreezeReason, RolloutState
from flotilla_runtime.errors import RequestError
from flotilla_runtime.store import SyncTx
from flotilla_upgrade_orchestrator import control, reactions


def cordon_by_someone(sim: Sim, cluster_id: str, node_id: str) -> None:
    """Somebody else cordons a node: the sim node and the inventory the orchestrator reads both say so."""
    node = sim.nodes[(cluster_id, node_id)]
    node.unschedulable = True

    def fold(tx: SyncTx) -> None:
        reactions.on_node_facts(
            sim.engine, tx, cluster_id, facts(node_id, node.role, node.version, unschedulable=True), sim.now
        )

    sim.work(fold)


def test_a_cordoned_worker_holding_the_whole_budget_is_refused_before_start(sim: Sim) -> None:
    sim.add_cluster("c0", cps=1, workers=3)
    cordon_by_someone(sim, "c0", "c0-w3")
    with pytest.raises(RequestError) as refused:
        sim.start(RolloutSpec(target_version="v1.30.4", max_unavailable=1))
    message = str(refused.value)
    assert "c0-w3" in message and "max_unavailable=1" in message and "--max-unavailable to 2" in message
    assert not sim.issued_ids  # nothing moved


def test_an_unavailable_worker_goes_first_within_the_budget_it_already_uses(sim: Sim) -> None:
    sim.add_cluster("c0", cps=1, workers=3)
    cordon_by_someone(sim, "c0", "c0-w3")
    rid = sim.start(RolloutSpec(target_version="v1.30.4", max_unavailable=2))
    cordons: list[str] = []
    while sim.queue:
        if sim.queue[0].step is StepKind.CORDON:
            cordons.append(sim.queue[0].node_id)
        sim.step_agents(1)
        if not sim.queue:
            sim.tick(1)
    rollout = sim.engine.rollouts[rid]
    assert rollout.state is RolloutState.SUCCEEDED, rollout.rec.message
    assert cordons[:2] == ["c0-cp0", "c0-w3"]  # control plane first (I2), then the node already down
    assert all(n.version == "v1.30.4" for n in sim.nodes.values())
    assert sim.nodes[("c0", "c0-w3")].unschedulable and not sim.nodes[("c0", "c0-w3")].cordoned_by  # I9


def test_a_rollout_that_cannot_move_freezes_with_no_progress_naming_the_nodes(sim: Sim) -> None:
    sim.add_cluster("c0", cps=1, workers=3)
    rid = sim.start(RolloutSpec(target_version="v1.30.4", max_unavailable=1))
    sim.step_agents(1)  # cp0 cordoned
    cordon_by_someone(sim, "c0", "c0-w2")  # someone cordons a worker while the control plane upgrades
    sim.run()  # cp0 finishes; then nothing can be taken out
    rollout = sim.engine.rollouts[rid]
    assert rollout.state is RolloutState.RUNNING and rollout.rec.freeze is None  # not yet: a few deadlines
    assert rollout.clusters["c0"].state is ClusterRolloutState.UPGRADING_WORKERS
    issued = len(sim.issued_ids)
    sim.tick(sim.engine.timeouts.no_progress_s)
    assert rollout.state is RolloutState.FROZEN
    freeze = rollout.rec.freeze
    assert freeze is not None and freeze.reason is FreezeReason.NO_PROGRESS
    assert "c0-w2 (cordoned, not by this rollout)" in freeze.message
    assert "max_unavailable=1" in freeze.message and "c0-w1" in freeze.message
    assert len(sim.issued_ids) == issued
    frozen = [b for _, s, b in sim.events if s == "upgrade.RolloutFrozen/v1"]
    assert frozen and frozen[-1]["freeze"]["reason"] == "NoProgress"
    # The person uncordons the node and resumes: the rollout finishes.
    sim.nodes[("c0", "c0-w2")].unschedulable = False
    sim.work(
        lambda tx: reactions.on_node_facts(
            sim.engine,
            tx,
            "c0",
            facts("c0-w2", sim.nodes[("c0", "c0-w2")].role, sim.nodes[("c0", "c0-w2")].version),
            sim.now,
        )
    )
    sim.work(lambda tx: control.resume(sim.engine, tx, ResumeRolloutRequest(rollout_id=rid), sim.now))
    sim.run()
    assert rollout.state is RolloutState.SUCCEEDED, rollout.rec.message


def test_waits_that_end_by_themselves_are_no_stall(sim: Sim) -> None:
    sim.add_cluster("c0", cps=1, workers=1)
    rid = sim.start(RolloutSpec(target_version="v1.30.4", soak_s=3 * 3600))
    sim.run()
    rollout = sim.engine.rollouts[rid]
    assert rollout.clusters["c0"].state is ClusterRolloutState.SOAKING
    sim.tick(sim.engine.timeouts.no_progress_s + 1)
    assert rollout.state is RolloutState.RUNNING and rollout.rec.freeze is None
    sim.tick(3 * 3600)
    assert rollout.state is RolloutState.SUCCEEDED


def test_a_rollback_that_cannot_move_freezes_with_no_progress_and_resumes(sim: Sim) -> None:
    """A rollback is watched too: stalled by a node it does not return, it freezes with the reason; abort,
    retry and another rollback are refused while it is on its way back; a resume sends it back to rolling back."""
    sim.add_cluster("c0", cps=1, workers=2)
    rid = sim.start(RolloutSpec(target_version="v1.30.4", max_unavailable=1))
    sim.run()
    assert sim.status(rid).rollout.state is RolloutState.SUCCEEDED
    sim.node_health("c0", "c0-cp0", NodeHealth.NOT_READY)  # holds the budget; a minor rollback keeps the control plane
    reply = sim.command("rollback", RollbackRequest(rollout_id=rid))
    assert reply.rollout.state is RolloutState.ROLLING_BACK
    issued = len(sim.issued_ids)
    sim.run()
    assert len(sim.issued_ids) == issued  # nothing can be taken out
    sim.tick(sim.engine.timeouts.no_progress_s)
    status = sim.status(rid)
    assert status.rollout.state is RolloutState.FROZEN
    assert status.rollout.freeze is not None and status.rollout.freeze.reason is FreezeReason.NO_PROGRESS
    assert "c0-cp0 (NotReady)" in status.rollout.freeze.message and "max_unavailable=1" in status.rollout.freeze.message
    for verb, request in (
        ("abort", AbortRolloutRequest(rollout_id=rid)),
        ("retry", RetryRequest(rollout_id=rid)),
        ("rollback", RollbackRequest(rollout_id=rid)),
    ):
        with pytest.raises(RequestError) as refused:
            sim.command(verb, request)
        assert refused.value.code is ErrorCode.CONFLICT, verb
        assert "resume` continues the rollback" in str(refused.value), verb
    sim.node_health("c0", "c0-cp0", NodeHealth.READY)
    assert sim.command("resume", ResumeRolloutRequest(rollout_id=rid)).rollout.state is RolloutState.ROLLING_BACK
    sim.run()
    assert sim.status(rid).rollout.state is RolloutState.ROLLED_BACK
    assert [n.version for (_, nid), n in sorted(sim.nodes.items()) if "-w" in nid] == ["v1.29.6", "v1.29.6"]
