"""`retry` in every state where a message suggests it: accepted and the rollout moves on; where it cannot
work (a freeze with no failed cluster), the refusal says what to do instead.

Where `retry` is suggested: the freeze of an exceeded failure budget (the CLI's hint, the demo), a rollout
CompletedWithFailures (its message), a cluster Failed with InventoryNotAtTarget (its failure).
"""

from __future__ import annotations

import pytest
from orchestrator_harness import Sim
from test_inventory import report_node, status

from flotilla_contracts.v1.agent import StepKind
from flotilla_contracts.v1.upgrade import FailureBudget, ResumeRolloutRequest, RetryRequest, RolloutSpec
from flotilla_contracts.v1.upgrade_status import ClusterRolloutState, FreezeReason, RolloutState
from flotilla_runtime.errors import RequestError
from flotilla_upgrade_orchestrator import control, recovery

TARGET = "v1.30.4"


def _retry(sim: Sim, rid: str) -> str:
    return sim.work(lambda tx: recovery.retry(sim.engine, tx, RetryRequest(rollout_id=rid), sim.now)).message


def _all_at_target(sim: Sim) -> bool:
    return all(n.version == TARGET and not n.cordoned_by for n in sim.nodes.values())


@pytest.mark.parametrize(
    ("budget", "reason"),
    [
        (FailureBudget(max_failed_nodes=0, max_failed_clusters=5), FreezeReason.NODE_FAILURE_BUDGET_EXCEEDED),
        (FailureBudget(max_failed_nodes=5, max_failed_clusters=0), FreezeReason.CLUSTER_FAILURE_BUDGET_EXCEEDED),
    ],
)
def test_retry_of_a_rollout_frozen_on_its_failure_budget_finishes_it(
    sim: Sim, budget: FailureBudget, reason: FreezeReason
) -> None:
    sim.add_cluster("c0", workers=2)
    sim.add_cluster("c1", workers=2)
    sim.nodes[("c0", "c0-w2")].fail_steps = {"upgrade"}
    rid = sim.start(RolloutSpec(target_version=TARGET, failure_budget=budget))
    sim.run()
    rollout = sim.engine.rollouts[rid]
    assert rollout.state is RolloutState.FROZEN and rollout.rec.freeze is not None
    assert rollout.rec.freeze.reason is reason
    sim.nodes[("c0", "c0-w2")].fail_steps = set()
    assert "retrying 1 cluster(s) (c0)" in _retry(sim, rid)
    sim.run()
    assert rollout.state is RolloutState.SUCCEEDED, rollout.rec.message
    assert _all_at_target(sim)


def test_retry_of_a_rollout_completed_with_failures_finishes_it(sim: Sim) -> None:
    sim.add_cluster("c0", workers=2)
    sim.add_cluster("c1", workers=2)
    sim.nodes[("c1", "c1-w1")].fail_steps = {"drain"}
    budget = FailureBudget(max_failed_nodes=5, max_failed_clusters=5)
    rid = sim.start(RolloutSpec(target_version=TARGET, failure_budget=budget))
    sim.run()
    rollout = sim.engine.rollouts[rid]
    assert rollout.state is RolloutState.COMPLETED_WITH_FAILURES
    assert "`retry` tries the failed ones again" in rollout.rec.message
    sim.nodes[("c1", "c1-w1")].fail_steps = set()
    assert "retrying 1 cluster(s) (c1)" in _retry(sim, rid)
    assert rollout.state is RolloutState.RUNNING
    sim.run()
    assert rollout.state is RolloutState.SUCCEEDED, rollout.rec.message
    assert _all_at_target(sim)


def test_retry_of_a_cluster_whose_inventory_never_reached_the_target_upgrades_those_nodes_again(sim: Sim) -> None:
    sim.add_cluster("c0", cps=1, workers=1)
    report_node(sim, "c0", "c0-cp0", "v1.29.6", api_server="v1.29.6")
    rid = sim.start(RolloutSpec(target_version=TARGET))
    sim.run()
    sim.tick(sim.engine.timeouts.inventory_s + 1)
    reply = status(sim, rid)
    assert reply.clusters[0].state is ClusterRolloutState.FAILED
    assert "`retry` upgrades the cluster again" in reply.clusters[0].failure
    before = len(sim.issued)
    assert "1 node(s) start a new attempt" in _retry(sim, rid)
    sim.run()
    again = [(c.node_id, c.step) for c in sim.issued[before:]]
    assert ("c0-cp0", StepKind.UPGRADE) in again and ("c0-w1", StepKind.UPGRADE) not in again
    report_node(sim, "c0", "c0-cp0", TARGET, api_server=TARGET)  # the node, looked at, reports the target
    reply = status(sim, rid)
    assert reply.rollout.state is RolloutState.SUCCEEDED, reply.rollout.message


def test_retry_of_a_freeze_without_a_failed_cluster_says_to_resume_and_resume_works(sim: Sim) -> None:
    sim.add_cluster("c0", cps=1, workers=1)
    sim.add_cluster("c1", cps=1, workers=1)
    rid = sim.start(RolloutSpec(target_version=TARGET, max_concurrent_clusters=1))
    rollout = sim.engine.rollouts[rid]
    for _ in range(100):
        if rollout.clusters["c0"].state is ClusterRolloutState.SUCCEEDED:
            break
        if not sim.step_agents(1):
            sim.tick(1)
    assert rollout.clusters["c0"].state is ClusterRolloutState.SUCCEEDED
    report_node(sim, "c0", "c0-w1", "v1.29.6")  # drift: the rollout freezes (VersionDrift)
    assert rollout.rec.freeze is not None and rollout.rec.freeze.reason is FreezeReason.VERSION_DRIFT
    with pytest.raises(RequestError) as refused:
        _retry(sim, rid)
    assert "has no failed cluster to retry; it is Frozen (VersionDrift:" in str(refused.value)
    assert "then `resume`" in str(refused.value)
    sim.work(lambda tx: control.resume(sim.engine, tx, ResumeRolloutRequest(rollout_id=rid), sim.now))
    sim.run()
    rollout = sim.engine.rollouts[rid]  # the refused work rolled back: the engine reloaded from the file
    assert rollout.clusters["c1"].state is ClusterRolloutState.SUCCEEDED
    assert rollout.state is RolloutState.SUCCEEDED, rollout.rec.message
