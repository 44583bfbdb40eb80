"""Fleet disruption in the orchestrator: when much of the fleet goes Unreachable at once, a running rollout freezes
with FleetDisruption (nothing new starts), the verdict survives a restart, and the freeze lifts when the fleet
recovers; a rollout frozen for another reason stays frozen."""

from __future__ import annotations

from orchestrator_harness import Sim

from flotilla_contracts.v1.agent import StepKind
from flotilla_contracts.v1.heartbeat import ClusterHealth
from flotilla_contracts.v1.upgrade import RolloutSpec, WavesSpec
from flotilla_contracts.v1.upgrade_status import FreezeReason, RolloutState


def cordons(sim: Sim) -> int:
    return sum(1 for c in sim.issued if c.step is StepKind.CORDON)


def test_a_running_rollout_freezes_on_a_fleet_disruption_and_resumes_on_recovery(sim: Sim) -> None:
    for i in range(10):
        sim.add_cluster(f"c{i}", workers=2)
    rid = sim.start(RolloutSpec(target_version="v1.30.4", max_concurrent_clusters=2))
    sim.step_agents(3)
    for i in range(5):  # 50%: only their own clusters freeze (ClusterUnreachable)
        sim.cluster_health(f"c{i}", ClusterHealth.UNREACHABLE)
    assert sim.status(rid).rollout.state is RolloutState.RUNNING
    sim.cluster_health("c5", ClusterHealth.UNREACHABLE)  # 6 of 10 at once
    rollout = sim.status(rid).rollout
    assert rollout.state is RolloutState.FROZEN
    assert rollout.freeze is not None and rollout.freeze.reason is FreezeReason.FLEET_DISRUPTION
    assert "6 of 10 clusters Unreachable" in rollout.freeze.message

    sim.crash()  # a restart keeps the verdict: still frozen, nothing new starts
    before = cordons(sim)
    sim.step_agents()
    sim.tick(60)
    sim.step_agents()
    assert cordons(sim) == before
    assert sim.status(rid).rollout.state is RolloutState.FROZEN

    for i in range(4):  # 2 of 10 Unreachable: below the 35% recovery share
        sim.cluster_health(f"c{i}", ClusterHealth.READY)
    assert sim.status(rid).rollout.state is RolloutState.RUNNING
    unfrozen = [b for _, s, b in sim.events if s == "upgrade.RolloutUnfrozen/v1" and b["reason"] == "FleetRecovered"]
    assert len(unfrozen) == 1 and unfrozen[0]["freeze"]["reason"] == "FleetDisruption"
    for i in (4, 5):
        sim.cluster_health(f"c{i}", ClusterHealth.READY)
    sim.run()
    assert sim.status(rid).rollout.state is RolloutState.SUCCEEDED
    sim.check_forward_only()


def test_a_rollout_frozen_for_another_reason_stays_frozen_after_the_recovery(sim: Sim) -> None:
    for i in range(10):
        sim.add_cluster(f"c{i}", workers=2)
    sim.nodes[("c0", "c0-w2")].fail_steps = {"upgrade"}
    rid = sim.start(RolloutSpec(target_version="v1.30.4", waves=WavesSpec(canary_clusters=1)))
    sim.run()
    frozen = sim.status(rid).rollout
    assert frozen.state is RolloutState.FROZEN and frozen.freeze is not None
    assert frozen.freeze.reason is not FreezeReason.FLEET_DISRUPTION
    for i in range(10):
        sim.cluster_health(f"c{i}", ClusterHealth.UNREACHABLE)
    for i in range(10):
        sim.cluster_health(f"c{i}", ClusterHealth.READY)
    after = sim.status(rid).rollout
    assert after.state is RolloutState.FROZEN and after.freeze is not None
    assert after.freeze.reason is frozen.freeze.reason
    assert "upgrade.RolloutUnfrozen/v1" not in sim.schemas()
