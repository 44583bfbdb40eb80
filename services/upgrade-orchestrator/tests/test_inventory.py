"""Done means the fleet says so: a cluster is upgraded when its reported kubelets and API servers are at the
target, and a node reporting an older version afterwards is a drift (an event, a failure in status, a freeze)."""

from __future__ import annotations

from datetime import timedelta

from orchestrator_harness import Sim

from flotilla_contracts.v1.agent import NodeFacts
from flotilla_contracts.v1.upgrade import RolloutSpec
from flotilla_contracts.v1.upgrade_status import (
    ClusterRolloutState,
    FreezeReason,
    RolloutState,
    RolloutStatusRequest,
)
from flotilla_runtime.store import SyncTx
from flotilla_upgrade_orchestrator import queries, reactions

TARGET = "v1.30.4"


def report_node(sim: Sim, cluster_id: str, node_id: str, kubelet: str, api_server: str | None = None) -> None:
    """The cluster agent's inventory report of one node, as registration's NodeChanged passes it on."""
    node = sim.nodes[(cluster_id, node_id)]
    facts = NodeFacts(
        node_id=node_id, node_name=node_id, role=node.role, kubelet_version=kubelet, api_server_version=api_server
    )

    def fold(tx: SyncTx) -> None:
        reactions.on_node_facts(sim.engine, tx, cluster_id, facts, sim.now, ["api_server_version", "kubelet_version"])

    sim.work(fold)


def status(sim: Sim, rollout_id: str):  # type: ignore[no-untyped-def]
    return sim.work(lambda tx: queries.status(sim.engine, RolloutStatusRequest(rollout_id=rollout_id)))


def test_a_cluster_is_done_only_when_its_api_server_reports_the_target(sim: Sim) -> None:
    sim.add_cluster("c0", cps=1, workers=2)
    report_node(sim, "c0", "c0-cp0", "v1.29.6", api_server="v1.29.6")
    rid = sim.start(RolloutSpec(target_version=TARGET, max_unavailable=1))
    sim.run()
    # Every node finished its steps (kubelets verified at the target), but the API server still reports v1.29.6.
    reply = status(sim, rid)
    assert reply.rollout.state is RolloutState.RUNNING
    cluster = reply.clusters[0]
    assert cluster.state is ClusterRolloutState.UPGRADING_WORKERS
    assert "c0-cp0 kube-apiserver v1.29.6" in cluster.waiting and TARGET in cluster.waiting

    report_node(sim, "c0", "c0-cp0", TARGET, api_server=TARGET)
    reply = status(sim, rid)
    assert reply.rollout.state is RolloutState.SUCCEEDED and reply.clusters[0].waiting == ""
    assert reply.clusters[0].state is ClusterRolloutState.SUCCEEDED


def test_an_inventory_that_never_reaches_the_target_fails_the_cluster_naming_the_nodes(sim: Sim) -> None:
    sim.add_cluster("c0", cps=1, workers=1)
    report_node(sim, "c0", "c0-cp0", "v1.29.6", api_server="v1.29.6")
    rid = sim.start(RolloutSpec(target_version=TARGET, max_unavailable=1))
    sim.run()
    assert status(sim, rid).rollout.state is RolloutState.RUNNING
    sim.tick(sim.engine.timeouts.inventory_s + 1)
    reply = status(sim, rid)
    assert reply.rollout.state is not RolloutState.SUCCEEDED, "no Succeeded while the fleet disagrees"
    assert reply.clusters[0].state is ClusterRolloutState.FAILED
    assert "c0-cp0 kube-apiserver v1.29.6" in reply.clusters[0].failure
    assert any(f.reason == "InventoryNotAtTarget" for f in reply.failures)


def test_a_node_reporting_an_older_version_after_success_is_a_drift(sim: Sim) -> None:
    sim.add_cluster("c0", cps=1, workers=2)
    rid = sim.start(RolloutSpec(target_version=TARGET, max_unavailable=1))
    sim.run()
    assert status(sim, rid).rollout.state is RolloutState.SUCCEEDED
    # A stale report that does not change the kubelet is not a drift; a node back at v1.29.6 is.
    report_node(sim, "c0", "c0-w1", TARGET)
    assert not [b for _, s, b in sim.events if s == "upgrade.VersionDriftDetected/v1"]
    sim.now += timedelta(seconds=5)
    report_node(sim, "c0", "c0-w1", "v1.29.6")
    drifts = [b for _, s, b in sim.events if s == "upgrade.VersionDriftDetected/v1"]
    assert [(d["node_id"], d["component"], d["reported_version"]) for d in drifts] == [("c0-w1", "kubelet", "v1.29.6")]
    reply = status(sim, rid)
    assert any(f.reason == "VersionDrift" and "c0-w1" in f.message for f in reply.failures)


def test_a_drift_freezes_a_rollout_still_running(sim: Sim) -> None:
    sim.add_cluster("c0", cps=1, workers=1)
    sim.add_cluster("c1", cps=1, workers=1)
    rid = sim.start(RolloutSpec(target_version=TARGET, max_unavailable=1, max_concurrent_clusters=1))
    for _ in range(200):
        if sim.engine.rollouts[rid].clusters["c0"].state is ClusterRolloutState.SUCCEEDED:
            break
        if not sim.step_agents(limit=1):
            sim.tick(1)
    assert sim.engine.rollouts[rid].clusters["c0"].state is ClusterRolloutState.SUCCEEDED
    assert sim.engine.rollouts[rid].clusters["c1"].state is not ClusterRolloutState.SUCCEEDED
    report_node(sim, "c0", "c0-cp0", "v1.29.6", api_server="v1.29.6")
    reply = status(sim, rid)
    assert reply.rollout.state is RolloutState.FROZEN
    assert reply.rollout.freeze is not None and reply.rollout.freeze.reason is FreezeReason.VERSION_DRIFT
    assert "c0-cp0" in reply.rollout.freeze.message and "v1.29.6" in reply.rollout.freeze.message
