"""Rollback: only nodes whose version moved get a rollback; the rest are given back as they are."""

from __future__ import annotations

from orchestrator_harness import Sim

from flotilla_contracts.v1.agent import StepKind
from flotilla_contracts.v1.upgrade import RollbackRequest, RolloutSpec, SkipClusterRequest
from flotilla_contracts.v1.upgrade_status import ClusterRolloutState, RolloutState
from flotilla_upgrade_orchestrator import recovery


def _rollback(sim: Sim, rid: str) -> str:
    request = RollbackRequest(rollout_id=rid)
    return sim.work(lambda tx: recovery.rollback(sim.engine, tx, request, sim.now)).message


def _skip(sim: Sim, rid: str, cluster_id: str) -> None:
    request = SkipClusterRequest(rollout_id=rid, cluster_id=cluster_id)
    sim.work(lambda tx: recovery.skip(sim.engine, tx, request, sim.now))


def _rollback_events(sim: Sim) -> set[str]:
    return {
        body["node_id"]
        for _, schema, body in sim.events
        if schema == "upgrade.NodeStepStateChanged/v1" and body.get("direction") == "rollback"
    }


def test_a_node_that_failed_its_upgrade_gets_no_rollback_and_is_no_rollback_failure(sim: Sim) -> None:
    sim.add_cluster("c0", cps=1, workers=2, version="v1.30.2")
    sim.add_cluster("c1", cps=1, workers=2, version="v1.30.2")
    sim.nodes[("c1", "c1-w2")].fail_steps = {"upgrade"}
    rid = sim.start(RolloutSpec(target_version="v1.30.4"))
    sim.run()
    rollout = sim.engine.rollouts[rid]
    assert rollout.state is RolloutState.FROZEN, rollout.rec.message
    _skip(sim, rid, "c1")
    sim.run()
    assert rollout.clusters["c1"].state is ClusterRolloutState.SKIPPED
    assert sim.nodes[("c1", "c1-w2")].version == "v1.30.2"  # it never moved
    sim.nodes[("c1", "c1-w2")].fail_steps = set()
    before = len(sim.issued)
    assert _rollback(sim, rid).startswith("patch-level rollback: 5 upgraded node(s) in 2 cluster(s)")
    sim.run()
    assert [c.step for c in sim.issued[before:] if c.node_id == "c1-w2"] == []
    returned = {c.node_id for c in sim.issued[before:] if c.step is StepKind.ROLLBACK}
    assert returned == {"c0-cp0", "c0-w1", "c0-w2", "c1-cp0", "c1-w1"}
    assert "c1-w2" not in _rollback_events(sim)
    c1 = rollout.clusters["c1"]
    assert c1.state is ClusterRolloutState.ROLLED_BACK, c1.failure
    assert rollout.state is RolloutState.ROLLED_BACK, rollout.rec.message
    assert all(n.version == "v1.30.2" and not n.cordoned_by for n in sim.nodes.values())


def test_a_node_that_failed_after_its_version_moved_is_returned(sim: Sim) -> None:
    sim.add_cluster("c0", cps=1, workers=2, version="v1.30.2")
    sim.nodes[("c0", "c0-w2")].fail_steps = {"verify"}
    rid = sim.start(RolloutSpec(target_version="v1.30.4"))
    sim.run()
    rollout = sim.engine.rollouts[rid]
    assert rollout.state is RolloutState.FROZEN
    assert sim.nodes[("c0", "c0-w2")].cordoned_by == rid  # failed at verify, still cordoned by us
    sim.nodes[("c0", "c0-w2")].fail_steps = set()
    assert _rollback(sim, rid).startswith("patch-level rollback: 3 upgraded node(s)")
    sim.run()
    assert rollout.state is RolloutState.ROLLED_BACK, rollout.rec.message
    assert rollout.clusters["c0"].state is ClusterRolloutState.ROLLED_BACK, rollout.clusters["c0"].failure
    assert all(n.version == "v1.30.2" and not n.cordoned_by for n in sim.nodes.values())


def test_a_rollback_that_fails_is_reported_as_one(sim: Sim) -> None:
    sim.add_cluster("c0", cps=1, workers=2, version="v1.30.2")
    rid = sim.start(RolloutSpec(target_version="v1.30.4"))
    sim.run()
    sim.nodes[("c0", "c0-w1")].fail_steps = {"rollback"}
    _rollback(sim, rid)
    sim.run()
    cluster = sim.engine.rollouts[rid].clusters["c0"]
    assert cluster.state is ClusterRolloutState.FAILED
    assert cluster.failure.startswith("rollback of c0-w1: rollback InjectedFailure")
    # The cluster's other returns stop (not started, left at the target and in service); the rollout ends.
    assert sim.nodes[("c0", "c0-w1")].cordoned_by == rid  # left for a person to look at
    assert [(sim.nodes[("c0", n)].version, sim.nodes[("c0", n)].cordoned_by) for n in ("c0-w2", "c0-cp0")] == [
        ("v1.30.4", ""),
        ("v1.30.4", ""),
    ]
    rollout = sim.engine.rollouts[rid]
    assert rollout.state is RolloutState.ROLLED_BACK
    assert "clusters with failures: c0" in rollout.rec.message
