"""`retry` while a failed node's cluster still gives its other nodes back: accepted, queued, run once it settles.

The rule (retries.py) on plain records, then the engine with simulated agents: what the user is told, that
nothing new is disrupted before the cluster settles (I7), and that the rollout then finishes (I4, I10).
"""

from __future__ import annotations

from orchestrator_harness import Sim

from flotilla_contracts.v1.agent import StepKind
from flotilla_contracts.v1.common import NodeRole
from flotilla_contracts.v1.upgrade import RetryRequest, RolloutSpec, UpgradePlan
from flotilla_contracts.v1.upgrade_status import ClusterRolloutState, NodeStepState, RolloutState
from flotilla_upgrade_orchestrator import recovery, retries
from flotilla_upgrade_orchestrator.model import ClusterRec, NodeRec, Rollout, RolloutRec, WaveRec

# --- the rule ---------------------------------------------------------------------------------------------


def _node(name: str, state: NodeStepState, *, in_flight: StepKind | None = None, ours: bool = False) -> NodeRec:
    return NodeRec(
        node_id=name,
        node_name=name,
        role=NodeRole.WORKER,
        order=0,
        from_version="v1.29.6",
        state=state,
        in_flight=in_flight,
        cordoned_by_us=ours,
        failed_step=StepKind.UPGRADE if state is NodeStepState.FAILED else None,
    )


def _cluster(cid: str, state: ClusterRolloutState, *nodes: NodeRec) -> ClusterRec:
    return ClusterRec(
        cluster_id=cid, wave=0, order=0, from_version="v1.29.6", target_version="v1.30.4", state=state, nodes=[*nodes]
    )


def _rollout(*clusters: ClusterRec, state: RolloutState = RolloutState.FROZEN) -> Rollout:
    spec = RolloutSpec(target_version="v1.30.4")
    rec = RolloutRec(rollout_id="r1", spec=spec, state=state, created_at=0, updated_at=0, waves=[WaveRec(index=0)])
    rollout = Rollout(rec=rec, plan=UpgradePlan(target_version="v1.30.4", feasible=True))
    rollout.clusters = {c.cluster_id: c for c in clusters}
    return rollout


def _failed_settled(cid: str) -> ClusterRec:
    # A node failed at upgrade stays cordoned for a person to look at: settled, nothing left to do.
    return _cluster(cid, ClusterRolloutState.FAILED, _node(f"{cid}-a", NodeStepState.FAILED, ours=True))


def _winding_down(cid: str, state: ClusterRolloutState = ClusterRolloutState.UPGRADING_WORKERS) -> ClusterRec:
    return _cluster(
        cid,
        state,
        _node(f"{cid}-a", NodeStepState.FAILED, ours=True),
        _node(f"{cid}-b", NodeStepState.UPGRADED, in_flight=StepKind.VERIFY, ours=True),
    )


def test_a_settled_failed_cluster_is_retried_at_once() -> None:
    cluster = _failed_settled("c1")
    decision = retries.decide(_rollout(cluster))
    assert decision.now == (cluster,) and decision.queued == () and decision.refusal == ""


def test_a_cluster_still_giving_nodes_back_after_a_failure_is_queued_not_refused() -> None:
    cluster = _winding_down("c1")
    assert retries.failing(cluster)
    assert retries.unsettled(cluster) == 1
    for named in (None, "c1"):
        decision = retries.decide(_rollout(cluster), named)
        assert decision.now == () and decision.queued == (cluster,) and decision.refusal == ""


def test_a_cluster_frozen_on_its_way_counts_by_the_state_it_resumes() -> None:
    cluster = _winding_down("c1", ClusterRolloutState.FROZEN)
    cluster.resume_state = ClusterRolloutState.UPGRADING_WORKERS
    assert retries.decide(_rollout(cluster)).queued == (cluster,)
    cluster.resume_state = ClusterRolloutState.ROLLING_BACK
    assert retries.decide(_rollout(cluster)).refusal


def test_both_kinds_in_one_retry() -> None:
    now, later = _failed_settled("c1"), _winding_down("c2")
    healthy = _cluster("c3", ClusterRolloutState.UPGRADING_WORKERS, _node("c3-a", NodeStepState.DRAINED, ours=True))
    decision = retries.decide(_rollout(now, later, healthy))
    assert decision.now == (now,) and decision.queued == (later,)


def test_nothing_failed_is_refused_with_the_reason() -> None:
    busy = _cluster("c1", ClusterRolloutState.UPGRADING_WORKERS, _node("c1-a", NodeStepState.DRAINED, ours=True))
    rollout = _rollout(busy, state=RolloutState.RUNNING)
    assert retries.decide(rollout).refusal == "rollout r1 has no failed cluster to retry"
    assert retries.decide(rollout, "c1").refusal == "cluster c1 is UpgradingWorkers, not Failed"


def test_a_queued_retry_is_due_only_once_the_cluster_settled_as_failed_in_an_open_rollout() -> None:
    cluster = _winding_down("c1")
    rollout = _rollout(cluster)
    assert not retries.due(rollout, cluster)  # not asked for
    cluster.retry_queued = True
    assert not retries.due(rollout, cluster)  # still upgrading, a verify in flight
    cluster.state = ClusterRolloutState.FAILED
    assert not retries.due(rollout, cluster)  # Failed, but the verify has not answered yet
    cluster.nodes[1].in_flight = None
    cluster.nodes[1].state = NodeStepState.UNCORDONED
    cluster.nodes[1].cordoned_by_us = False
    cluster.nodes[1].verified = True
    assert retries.due(rollout, cluster)
    for closed in retries.CLOSED:
        rollout.rec.state = closed
        assert not retries.due(rollout, cluster), closed


# --- on the engine ----------------------------------------------------------------------------------------


def _until_frozen(sim: Sim, rid: str) -> None:
    """Agents answer one command at a time until the rollout freezes."""
    while sim.engine.rollouts[rid].state is not RolloutState.FROZEN:
        assert sim.step_agents(1), "the rollout never froze"


def _retry(sim: Sim, rid: str, cluster_id: str | None = None) -> str:
    request = RetryRequest(rollout_id=rid, cluster_id=cluster_id)
    return sim.work(lambda tx: recovery.retry(sim.engine, tx, request, sim.now)).message


def test_retry_while_the_failed_cluster_still_gives_nodes_back_runs_once_it_settles(sim: Sim) -> None:
    sim.add_cluster("c0", cps=1, workers=2)
    sim.nodes[("c0", "c0-w2")].fail_steps = {"upgrade"}
    rid = sim.start(RolloutSpec(target_version="v1.30.4", max_unavailable=2))
    _until_frozen(sim, rid)
    rollout = sim.engine.rollouts[rid]
    cluster = rollout.clusters["c0"]
    assert cluster.state is ClusterRolloutState.UPGRADING_WORKERS and sim.queue, "c0-w1 is still being given back"
    sim.nodes[("c0", "c0-w2")].fail_steps = set()

    message = _retry(sim, rid)
    assert "retrying 1 cluster(s) (c0) against the pinned target v1.30.4" in message
    assert "c0 (1 node(s))" in message and "retried as soon as it settles" in message
    assert "the rollout stays Frozen (NodeFailureBudgetExceeded)" in message
    assert rollout.state is RolloutState.FROZEN and cluster.retry_queued
    assert _retry(sim, rid) == message  # asking again changes nothing

    # I7: until c0 settles, only steps that give capacity back go out; nothing new is disrupted.
    while cluster.retry_queued:
        assert rollout.state is RolloutState.FROZEN
        assert all(c.step in (StepKind.VERIFY, StepKind.UNCORDON) for c in sim.queue), sim.queue
        assert sim.step_agents(1)
    moves = [
        (b["from"], b["to"], b["reason"])
        for _, s, b in sim.events
        if s == "upgrade.ClusterRolloutStateChanged/v1" and b["cluster_id"] == "c0"
    ]
    assert moves[-3:] == [
        ("UpgradingWorkers", "Failed", "NodeFailed"),
        ("Failed", "Pending", "Retry"),
        ("Pending", "UpgradingWorkers", "Started"),  # the freeze lifted in the same move: it starts again at once
    ]
    assert rollout.rec.freeze is None and rollout.state is RolloutState.RUNNING

    sim.run()
    assert rollout.state is RolloutState.SUCCEEDED, rollout.rec.message
    assert all(n.version == "v1.30.4" and not n.cordoned_by for n in sim.nodes.values())
    assert sim.schemas().count("upgrade.RolloutFrozen/v1") == 1
    assert sim.schemas().count("upgrade.RolloutUnfrozen/v1") == 1
    assert cluster.retries == 1
    sim.check_forward_only()


def test_a_queued_retry_survives_a_restart_of_the_orchestrator(sim: Sim) -> None:
    sim.add_cluster("c0", cps=1, workers=2)
    sim.nodes[("c0", "c0-w2")].fail_steps = {"upgrade"}
    rid = sim.start(RolloutSpec(target_version="v1.30.4", max_unavailable=2))
    _until_frozen(sim, rid)
    sim.nodes[("c0", "c0-w2")].fail_steps = set()
    assert "retried as soon as it settles" in _retry(sim, rid, "c0")
    sim.crash()
    sim.run()
    rollout = sim.engine.rollouts[rid]
    assert rollout.state is RolloutState.SUCCEEDED, rollout.rec.message
    assert all(n.version == "v1.30.4" and not n.cordoned_by for n in sim.nodes.values())


def test_an_abort_drops_a_queued_retry(sim: Sim) -> None:
    from flotilla_contracts.v1.upgrade import AbortRolloutRequest
    from flotilla_upgrade_orchestrator import control

    sim.add_cluster("c0", cps=1, workers=2)
    sim.nodes[("c0", "c0-w2")].fail_steps = {"upgrade"}
    rid = sim.start(RolloutSpec(target_version="v1.30.4", max_unavailable=2))
    _until_frozen(sim, rid)
    _retry(sim, rid)
    sim.work(lambda tx: control.abort(sim.engine, tx, AbortRolloutRequest(rollout_id=rid), sim.now))
    sim.run()
    rollout = sim.engine.rollouts[rid]
    assert rollout.state is RolloutState.ABORTED
    assert rollout.clusters["c0"].retries == 0
    assert not any(n.cordoned_by == rid for n in sim.nodes.values())
