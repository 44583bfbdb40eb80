"""Rollouts end to end on the engine with simulated agents: what an operator sees happen.

Every check reads what a user gets (the status and list replies, a command's reply, the events and the agent
commands emitted) or the simulated fleet itself, never the engine's records.
"""

from __future__ import annotations

from orchestrator_harness import Sim, cluster_in, node_in

from flotilla_contracts.v1.common import NodeRole
from flotilla_contracts.v1.upgrade import FailureBudget, RolloutSpec, WavesSpec
from flotilla_contracts.v1.upgrade_status import ClusterRolloutState, RolloutState


def test_a_small_rollout_reaches_the_target_on_every_node(sim: Sim) -> None:
    for i in range(3):
        sim.add_cluster(f"c{i}", cps=2, workers=4)
    rid = sim.start(RolloutSpec(target_version="v1.30.4", max_unavailable=2, max_concurrent_clusters=2))
    sim.run()
    status = sim.status(rid)
    assert status.rollout.state is RolloutState.SUCCEEDED, status.rollout
    assert all(n.version == "v1.30.4" and not n.cordoned_by for n in sim.nodes.values())
    assert [c.cluster_id for c in status.clusters] == ["c0", "c1", "c2"]
    assert all(c.state is ClusterRolloutState.SUCCEEDED for c in status.clusters)
    sim.check_forward_only()


def _waves(sim: Sim) -> list[str]:
    return [b["to"] for _, s, b in sim.events if s == "upgrade.WaveStateChanged/v1"]


def test_control_plane_goes_first_one_node_at_a_time(sim: Sim) -> None:
    sim.add_cluster("c0", cps=3, workers=3)
    sim.start(RolloutSpec(target_version="v1.30.4", max_unavailable=3))
    order: list[tuple[str, str | None]] = []
    while sim.queue or not order:
        if not sim.queue:
            break
        command = sim.queue[0]
        if command.step.value == "upgrade":
            order.append((command.node_id, command.kubeadm_action))
        sim.step_agents(1)
    assert order[:3] == [("c0-cp0", "apply"), ("c0-cp1", "node"), ("c0-cp2", "node")]
    assert {n for n, _ in order[3:]} == {"c0-w3", "c0-w4", "c0-w5"}


def test_a_failing_node_freezes_with_its_reason_and_retry_finishes(sim: Sim) -> None:
    for i in range(3):
        sim.add_cluster(f"c{i}", workers=2)
    sim.nodes[("c1", "c1-w2")].fail_steps = {"upgrade"}
    rid = sim.start(RolloutSpec(target_version="v1.30.4", waves=WavesSpec(canary_clusters=1)))
    sim.run()
    status = sim.status(rid)
    assert status.rollout.state is RolloutState.FROZEN
    assert status.rollout.freeze is not None and "c1/c1-w2" in status.rollout.freeze.message
    assert cluster_in(status, "c1").state is ClusterRolloutState.FAILED
    assert "upgrade InjectedFailure" in cluster_in(status, "c1").failure
    assert cluster_in(status, "c2").state is ClusterRolloutState.PENDING  # nothing new moved while frozen
    assert "upgrade.RolloutFrozen/v1" in sim.schemas()
    assert sim.nodes[("c1", "c1-w2")].cordoned_by == rid  # left cordoned for a person to look at
    sim.nodes[("c1", "c1-w2")].fail_steps = set()
    from flotilla_contracts.v1.upgrade import RetryRequest

    assert "retrying 1 cluster(s) (c1)" in _do(sim, "retry", RetryRequest(rollout_id=rid))
    sim.run()
    status = sim.status(rid)
    assert status.rollout.state is RolloutState.SUCCEEDED, status.rollout
    assert all(n.version == "v1.30.4" and not n.cordoned_by for n in sim.nodes.values())
    sim.check_forward_only()


def test_a_drain_failure_gives_the_node_back(sim: Sim) -> None:
    sim.add_cluster("c0", workers=2)
    sim.nodes[("c0", "c0-w1")].fail_steps = {"drain"}
    rid = sim.start(RolloutSpec(target_version="v1.30.4"))
    sim.run()
    assert sim.status(rid).rollout.state is RolloutState.FROZEN
    assert not sim.nodes[("c0", "c0-w1")].cordoned_by
    assert sim.nodes[("c0", "c0-w1")].version == "v1.29.6"


def test_worker_kubelets_never_move_before_the_api_servers(sim: Sim) -> None:
    sim.add_cluster("c0", cps=1, workers=2)
    sim.nodes[("c0", "c0-cp0")].fail_steps = {"verify"}
    rid = sim.start(RolloutSpec(target_version="v1.30.4", failure_budget=FailureBudget(max_failed_nodes=5)))
    sim.run()
    assert all(n.version == "v1.29.6" for n in sim.nodes.values() if n.role is NodeRole.WORKER)
    assert cluster_in(sim.status(rid), "c0").state is ClusterRolloutState.FAILED


def _do(sim: Sim, verb: str, request: object) -> str:
    """A later command's reply message, as `flotilla upgrade <verb>` prints it."""
    return sim.command(verb, request).message


def test_pause_stops_new_disruption_and_resume_finishes(sim: Sim) -> None:
    from flotilla_contracts.v1.upgrade import PauseRolloutRequest, ResumeRolloutRequest

    sim.add_cluster("c0", workers=4)
    rid = sim.start(RolloutSpec(target_version="v1.30.4", max_unavailable=2))
    sim.step_agents(2)  # cordon and drain of the control-plane node
    assert "step(s) in flight finish" in _do(sim, "pause", PauseRolloutRequest(rollout_id=rid))
    sim.run()
    issued = len(sim.issued_ids)
    assert sim.status(rid).rollout.state is RolloutState.PAUSED
    assert not any(c.step.value in ("cordon", "drain", "upgrade") for c in sim.queue)
    sim.tick(600)
    assert len(sim.issued_ids) == issued
    assert _do(sim, "resume", ResumeRolloutRequest(rollout_id=rid)) == "resumed"
    sim.run()
    assert sim.status(rid).rollout.state is RolloutState.SUCCEEDED


def test_abort_lets_steps_finish_and_uncordons_what_we_cordoned(sim: Sim) -> None:
    from flotilla_contracts.v1.upgrade import AbortRolloutRequest

    sim.add_cluster("c0", workers=4)
    sim.add_cluster("c1", workers=4)
    rid = sim.start(RolloutSpec(target_version="v1.30.4", max_unavailable=2))
    for _ in range(8):
        sim.step_agents(1)
    message = _do(sim, "abort", AbortRolloutRequest(rollout_id=rid, reason="change freeze"))
    assert "nothing new starts" in message
    sim.run()
    status = sim.status(rid)
    assert status.rollout.state is RolloutState.ABORTED
    assert not any(n.cordoned_by for n in sim.nodes.values())
    assert cluster_in(status, "c1").state is ClusterRolloutState.ABORTED
    assert all(n.version == "v1.29.6" for (c, _), n in sim.nodes.items() if c == "c1")


def test_a_wave_waits_for_approval(sim: Sim) -> None:
    from flotilla_contracts.v1.upgrade import ApproveWaveRequest

    for i in range(3):
        sim.add_cluster(f"c{i}", workers=1)
    rid = sim.start(
        RolloutSpec(target_version="v1.30.4", waves=WavesSpec(canary_clusters=1), approval_before_waves=[1])
    )
    sim.run()
    status = sim.status(rid)
    assert status.rollout.state is RolloutState.AWAITING_APPROVAL
    assert [(c.cluster_id, c.state) for c in status.clusters] == [
        ("c0", ClusterRolloutState.SUCCEEDED),
        ("c1", ClusterRolloutState.PENDING),
        ("c2", ClusterRolloutState.PENDING),
    ]
    assert _do(sim, "approve", ApproveWaveRequest(rollout_id=rid, wave=1)) == "wave 1 approved"
    sim.run()
    assert sim.status(rid).rollout.state is RolloutState.SUCCEEDED


def test_soak_holds_the_next_wave_and_a_failing_gate_freezes(sim: Sim) -> None:
    from flotilla_contracts.v1.heartbeat import ClusterHealth

    for i in range(2):
        sim.add_cluster(f"c{i}", workers=1)
    rid = sim.start(RolloutSpec(target_version="v1.30.4", waves=WavesSpec(canary_clusters=1), soak_s=300))
    sim.run(tick_s=1)
    status = sim.status(rid)
    assert cluster_in(status, "c0").state is ClusterRolloutState.SOAKING
    assert cluster_in(status, "c1").state is ClusterRolloutState.PENDING
    sim.cluster_health("c0", ClusterHealth.DEGRADED)
    status = sim.status(rid)
    assert status.rollout.state is RolloutState.FROZEN
    assert status.rollout.freeze is not None and status.rollout.freeze.reason.value == "HealthGateFailed"
    sim.cluster_health("c0", ClusterHealth.READY)
    from flotilla_contracts.v1.upgrade import ResumeRolloutRequest

    _do(sim, "resume", ResumeRolloutRequest(rollout_id=rid))
    sim.tick(301)
    sim.run(tick_s=301)
    assert sim.status(rid).rollout.state is RolloutState.SUCCEEDED


def test_maintenance_windows_hold_clusters_until_they_open(sim: Sim) -> None:
    from flotilla_contracts.v1.upgrade import MaintenanceWindow

    sim.add_cluster("eu", workers=1, labels={"region": "eu"})
    sim.add_cluster("us", workers=1, labels={"region": "us"})
    window = MaintenanceWindow(selector="region=us", start="12:00", duration_s=3600)  # T0 is 10:00 UTC
    rid = sim.start(RolloutSpec(target_version="v1.30.4", max_concurrent_clusters=2, maintenance_windows=[window]))
    sim.run()
    status = sim.status(rid)
    assert cluster_in(status, "eu").state is ClusterRolloutState.SUCCEEDED
    assert cluster_in(status, "us").state is ClusterRolloutState.WAITING_WINDOW
    assert cluster_in(status, "us").window_opens_at is not None
    sim.tick(2 * 3600)
    sim.run()
    assert sim.status(rid).rollout.state is RolloutState.SUCCEEDED


def test_an_unreachable_cluster_freezes_its_upgrade_until_it_is_back(sim: Sim) -> None:
    from flotilla_contracts.v1.heartbeat import ClusterHealth

    sim.add_cluster("c0", workers=3)
    rid = sim.start(RolloutSpec(target_version="v1.30.4"))
    sim.step_agents(1)
    sim.cluster_health("c0", ClusterHealth.UNREACHABLE)
    sim.run()
    cluster = cluster_in(sim.status(rid), "c0")
    assert cluster.state is ClusterRolloutState.FROZEN
    assert cluster.freeze is not None and cluster.freeze.reason.value == "ClusterUnreachable"
    sim.cluster_health("c0", ClusterHealth.READY)
    sim.run()
    assert sim.status(rid).rollout.state is RolloutState.SUCCEEDED
    assert "upgrade.RolloutUnfrozen/v1" in sim.schemas()


def test_a_node_not_ready_during_the_rollout_counts_against_the_budget(sim: Sim) -> None:
    from flotilla_contracts.v1.heartbeat import NodeHealth

    sim.add_cluster("c0", workers=3)
    rid = sim.start(RolloutSpec(target_version="v1.30.4", max_unavailable=2))
    sim.step_agents(1)
    sim.node_health("c0", "c0-w3", NodeHealth.NOT_READY)
    status = sim.status(rid)
    assert status.rollout.state is RolloutState.FROZEN
    assert status.rollout.freeze is not None and "c0/c0-w3" in status.rollout.freeze.message
    assert status.failures[-1].reason == "NodeNotReady"


def test_not_ready_nodes_count_as_unavailable(sim: Sim) -> None:
    from flotilla_contracts.v1.heartbeat import NodeHealth
    from flotilla_contracts.v1.upgrade import FailureBudget

    sim.add_cluster("c0", workers=3)
    from flotilla_runtime.errors import RequestError

    sim.node_health("c0", "c0-w3", NodeHealth.NOT_READY)  # before the rollout: already unavailable
    spec = RolloutSpec(target_version="v1.30.4", max_unavailable=1, failure_budget=FailureBudget(max_failed_nodes=3))
    try:  # 1 of 1 already down: nothing else could ever be cordoned (I1), so the plan refuses, not stalls
        sim.start(spec)
        raise AssertionError("the start should have been refused")
    except RequestError as refused:
        assert "c0-w3" in str(refused) and "max_unavailable=1" in str(refused)
    assert len(sim.issued_ids) == 0
    sim.node_health("c0", "c0-w3", NodeHealth.READY)
    rid = sim.start(spec, request_id="req-2")
    sim.run()
    assert sim.status(rid).rollout.state is RolloutState.SUCCEEDED


def test_skip_leaves_a_failed_cluster_out_and_lifts_the_budget_freeze(sim: Sim) -> None:
    from flotilla_contracts.v1.upgrade import SkipClusterRequest

    for i in range(2):
        sim.add_cluster(f"c{i}", workers=1)
    sim.nodes[("c0", "c0-w1")].fail_steps = {"verify"}
    rid = sim.start(RolloutSpec(target_version="v1.30.4"))
    sim.run()
    assert sim.status(rid).rollout.state is RolloutState.FROZEN
    assert "no longer counts" in _do(sim, "skip", SkipClusterRequest(rollout_id=rid, cluster_id="c0"))
    sim.run()
    status = sim.status(rid)
    assert status.rollout.state is RolloutState.SUCCEEDED
    assert cluster_in(status, "c0").state is ClusterRolloutState.SKIPPED


def test_a_step_without_a_report_freezes_its_cluster_until_the_agent_answers(sim: Sim) -> None:
    sim.add_cluster("c0", workers=1)
    rid = sim.start(RolloutSpec(target_version="v1.30.4"))
    late = sim.queue.pop(0)  # the agent is away
    sim.tick(3600)
    cluster = cluster_in(sim.status(rid), "c0")
    assert cluster.state is ClusterRolloutState.FROZEN
    assert cluster.freeze is not None and cluster.freeze.reason.value == "LostContact"
    assert "no report from the agent on c0-cp0" in cluster.freeze.message
    assert node_in(cluster, late.node_id).step_in_flight is late.step  # it may still run: it stays counted
    sim.deliver(sim.execute(late))  # the agent comes back and runs it
    sim.run()
    assert sim.status(rid).rollout.state is RolloutState.SUCCEEDED


def test_without_the_lease_nothing_is_issued(sim: Sim) -> None:
    sim.add_cluster("c0", workers=1)
    sim.lease_held = False
    rid = sim.start(RolloutSpec(target_version="v1.30.4"))
    sim.tick(10)
    assert not sim.issued_ids
    sim.lease_held, sim.epoch = True, 7
    sim.tick(1)
    assert sim.queue and all(c.epoch == 7 for c in sim.queue)
    sim.run()
    assert sim.status(rid).rollout.state is RolloutState.SUCCEEDED


def test_a_node_cordoned_by_someone_else_is_left_cordoned(sim: Sim) -> None:
    sim.add_cluster("c0", workers=2)
    sim.nodes[("c0", "c0-w2")].cordoned_by = "an-admin"
    rid = sim.start(RolloutSpec(target_version="v1.30.4", max_unavailable=2))
    sim.run()
    assert sim.status(rid).rollout.state is RolloutState.SUCCEEDED
    assert sim.nodes[("c0", "c0-w2")].cordoned_by == "an-admin"
    assert sim.nodes[("c0", "c0-w2")].version == "v1.30.4"


def test_patch_rollback_returns_every_upgraded_node(sim: Sim) -> None:
    from flotilla_contracts.v1.upgrade import RollbackRequest

    sim.add_cluster("c0", cps=1, workers=2, version="v1.30.2")
    sim.add_cluster("c1", cps=1, workers=2, version="v1.30.2")
    rid = sim.start(RolloutSpec(target_version="v1.30.4"))
    sim.run()
    message = _do(sim, "rollback", RollbackRequest(rollout_id=rid))
    assert message.startswith("patch-level rollback: 6 upgraded node(s)")
    sim.run()
    assert sim.status(rid).rollout.state is RolloutState.ROLLED_BACK
    assert all(n.version == "v1.30.2" and not n.cordoned_by for n in sim.nodes.values())


def test_minor_rollback_keeps_the_control_plane_and_says_so(sim: Sim) -> None:
    from flotilla_contracts.v1.upgrade import RollbackRequest

    sim.add_cluster("c0", cps=1, workers=2)
    rid = sim.start(RolloutSpec(target_version="v1.30.4"))
    sim.run()
    message = _do(sim, "rollback", RollbackRequest(rollout_id=rid))
    assert "control plane cannot be downgraded" in message and "2 upgraded worker(s)" in message
    sim.run()
    assert sim.status(rid).rollout.state is RolloutState.ROLLED_BACK
    assert sim.nodes[("c0", "c0-cp0")].version == "v1.30.4"
    assert [sim.nodes[("c0", f"c0-w{i}")].version for i in (1, 2)] == ["v1.29.6", "v1.29.6"]


def test_a_crash_between_works_repeats_nothing(sim: Sim) -> None:
    for i in range(2):
        sim.add_cluster(f"c{i}", workers=3)
    rid = sim.start(RolloutSpec(target_version="v1.30.4", max_concurrent_clusters=2, max_unavailable=2))
    for _ in range(30):
        sim.step_agents(1)
        sim.crash()
    sim.run()
    assert sim.status(rid).rollout.state is RolloutState.SUCCEEDED
    assert len(sim.issued_ids) == len(set(sim.issued_ids)) == 8 * 5


def test_start_is_idempotent_by_request_id(sim: Sim) -> None:
    sim.add_cluster("c0", workers=1)
    first = sim.start(RolloutSpec(target_version="v1.30.4"), request_id="same")
    again = sim.start(RolloutSpec(target_version="v1.30.4"), request_id="same")
    assert first == again and [r.rollout_id for r in sim.rollouts()] == [first]
    assert sim.schemas().count("upgrade.RolloutStarted/v1") == 1
