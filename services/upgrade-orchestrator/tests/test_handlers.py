"""Every upgrade command through TestNatsBroker: replies a CLI renders, and each bad input refused with a code."""

from __future__ import annotations

from typing import Any

import pytest
from orchestrator_commands import Commands

from flotilla_contracts.v1.heartbeat import ClusterHealth, ClusterHealthChanged
from flotilla_contracts.v1.upgrade import (
    AbortRolloutRequest,
    ApproveWaveRequest,
    PauseRolloutRequest,
    PlanReply,
    PlanRequest,
    ResumeRolloutRequest,
    RetryRequest,
    RollbackRequest,
    RolloutSpec,
    SkipClusterRequest,
    StartRolloutReply,
    StartRolloutRequest,
    WavesSpec,
)
from flotilla_contracts.v1.upgrade_status import (
    ListRolloutsReply,
    ListRolloutsRequest,
    RolloutReply,
    RolloutState,
    RolloutStatusReply,
    RolloutStatusRequest,
)
from flotilla_upgrade_orchestrator import reactions


def spec(**fields: Any) -> RolloutSpec:
    return RolloutSpec(**{"target_version": "v1.30.4", **fields})


async def start(c: Commands, request_id: str = "r1", **fields: Any) -> StartRolloutReply:
    return await c.ok(
        "upgrade.start", StartRolloutRequest(request_id=request_id, spec=spec(**fields)), StartRolloutReply
    )


async def test_plan_shows_waves_steps_checks_refusals_and_an_estimate(commands: Commands) -> None:
    for i in range(4):
        await commands.fleet(f"ok{i}", cps=3, workers=2)
    await commands.fleet("old", version="v1.28.9")  # would skip a minor
    await commands.fleet("lagging", version="v1.29.6", worker_version="v1.26.3")  # kubelet 4 minors behind
    await commands.fleet("gone")
    await commands.orchestrator.run(
        lambda tx: reactions.on_cluster_health(
            commands.orchestrator.engine,
            tx,
            ClusterHealthChanged(
                cluster_id="gone",
                to=ClusterHealth.UNREACHABLE,
                reason="no heartbeats",
                occurred_at=commands.orchestrator.clock(),
            ),
            commands.orchestrator.clock(),
        )
    )
    plan = (
        await commands.ok(
            "upgrade.plan", PlanRequest(spec=spec(waves=WavesSpec(canary_clusters=1, percentages=[50, 100]))), PlanReply
        )
    ).plan
    assert not plan.feasible  # skew refusals stop a start
    assert [len(w.clusters) for w in plan.waves] == [1, 1, 2]
    cluster = plan.waves[0].clusters[0]
    assert [(n.node_id, n.kubeadm_action) for n in cluster.control_plane] == [
        ("ok0-n0", "apply"),
        ("ok0-n1", "node"),
        ("ok0-n2", "node"),
    ]
    assert [n.node_id for n in cluster.workers] == ["ok0-n3", "ok0-n4"]
    assert all(check.ok for check in cluster.skew_checks)
    reasons = {(r.cluster_id, r.reason.value) for r in plan.refusals}
    assert reasons == {("old", "SkipsMinor"), ("lagging", "KubeletTooOld"), ("gone", "ClusterUnreachable")}
    assert plan.estimated_duration_s > 0 and plan.clusters_total == 4 and plan.nodes_total == 20
    assert await commands.events() == []  # nothing moves


@pytest.mark.parametrize(
    ("body", "code", "words"),
    [
        ({"target_version": "v1.30.99"}, "unknown_version", "not a released patch"),
        ({"target_version": "v1.99.0"}, "unknown_version", "not a Kubernetes release"),
        ({"target_version": "1.30"}, "invalid_field", "spec.target_version"),
        ({"target_version": "v1.30.4", "selector": "env in (a"}, "invalid_selector", "selector"),
        ({"target_version": "v1.30.4", "waves": {"percentages": [50, 150]}}, "invalid_field", "percentages"),
        ({"target_version": "v1.30.4", "waves": {"percentages": [60, 40, 100]}}, "invalid_plan", "must rise"),
        ({"target_version": "v1.30.4", "waves": {"percentages": [10, 50]}}, "invalid_plan", "end at 100"),
        ({"target_version": "v1.30.4", "max_unavailable": 0}, "invalid_field", "max_unavailable"),
        ({"target_version": "v1.30.4", "approval_before_waves": [5]}, "invalid_plan", "wave 5 does not exist"),
        (
            {"target_version": "v1.30.4", "health_gates": {"verify_timeout_s": 1e12}},
            "invalid_field",
            "health_gates.verify_timeout_s: 1e+12 is out of range: at most 86400 seconds",
        ),
        ({"target_version": "v1.30.4", "drain": {"eviction_retry_s": 1e300}}, "invalid_field", "eviction_retry_s"),
        ({"target_version": "v1.30.4", "drain": {"pod_grace_period_s": 2**70}}, "invalid_field", "pod_grace_period_s"),
        (
            {
                "target_version": "v1.30.4",
                "maintenance_windows": [
                    {"selector": "a=b", "start": "02:00", "duration_s": 60, "timezone": "Mars/Olympus"}
                ],
            },
            "invalid_plan",
            "time zone",
        ),
    ],
)
async def test_bad_specs_are_refused_before_anything_moves(
    commands: Commands, body: dict[str, Any], code: str, words: str
) -> None:
    await commands.fleet("c0")
    for verb, request in (("upgrade.plan", {"spec": body}), ("upgrade.start", {"request_id": "x", "spec": body})):
        error = await commands.error(verb, request)
        assert error["code"] == code, error
        assert words in error["message"], error
    assert await commands.events() == []


async def test_start_refuses_skew_conflicts_and_empty_plans(commands: Commands) -> None:
    await commands.fleet("c0")
    await commands.fleet("old", version="v1.28.9", labels={"tier": "old"})
    error = await commands.error("upgrade.start", StartRolloutRequest(request_id="a", spec=spec()))
    assert error["code"] == "skew_violation" and "v1.28.9 -> v1.30.4 moves 2 minor(s)" in error["message"]
    assert error["details"]["refusals"][0]["cluster_id"] == "old"
    started = await start(commands, selector="!tier")
    error = await commands.error("upgrade.start", StartRolloutRequest(request_id="b", spec=spec(selector="!tier")))
    assert error["code"] == "rollout_conflict" and started.rollout_id in error["message"]
    error = await commands.error("upgrade.start", StartRolloutRequest(request_id="c", spec=spec(selector="tier=none")))
    assert error["code"] == "invalid_plan" and "no member cluster matches" in error["message"]
    again = await start(commands, selector="!tier")  # same request id: the same rollout
    assert again.rollout_id == started.rollout_id


async def test_start_then_status_and_list_render_a_live_view(commands: Commands) -> None:
    for i in range(3):
        await commands.fleet(f"c{i}")
    started = await start(commands, waves=WavesSpec(canary_clusters=1), approval_before_waves=[1])
    schemas = await commands.events()
    assert schemas[:2] == ["upgrade.RolloutStarted/v1", "upgrade.RolloutStateChanged/v1"]
    assert "agent.NodeStepCommand/v1" in schemas
    status = await commands.ok(
        "upgrade.status",
        RolloutStatusRequest(rollout_id=started.rollout_id, include_nodes=True, limit=2),
        RolloutStatusReply,
    )
    assert status.rollout.state is RolloutState.RUNNING
    assert status.rollout.clusters.total == 3 and status.rollout.nodes.total == 9
    assert [w.requires_approval for w in status.waves] == [False, True]
    assert status.clusters[0].state.value == "UpgradingControlPlane"
    assert status.clusters[0].nodes[0].step_in_flight is not None
    assert status.clusters[0].nodes_unavailable == 1
    assert status.next_cursor == "2"
    assert status.writer is not None and status.writer.held_here and status.writer.epoch == 1
    assert status.writer.message == "written by this process (the replica that answered) at epoch 1"
    listed = await commands.ok("upgrade.list", ListRolloutsRequest(), ListRolloutsReply)
    assert [r.rollout_id for r in listed.rollouts] == [started.rollout_id]
    assert (
        await commands.ok("upgrade.list", ListRolloutsRequest(states=[RolloutState.PAUSED]), ListRolloutsReply)
    ).rollouts == []


async def test_control_commands_reply_with_the_rollout_and_what_they_did(commands: Commands) -> None:
    await commands.fleet("c0")
    await commands.fleet("c1")
    rid = (await start(commands, waves=WavesSpec(canary_clusters=1), approval_before_waves=[1])).rollout_id
    paused = await commands.ok("upgrade.pause", PauseRolloutRequest(rollout_id=rid), RolloutReply)
    assert paused.rollout.state is RolloutState.PAUSED and "no new disruption" in paused.message
    resumed = await commands.ok("upgrade.resume", ResumeRolloutRequest(rollout_id=rid), RolloutReply)
    assert resumed.rollout.state is RolloutState.RUNNING
    approved = await commands.ok("upgrade.approve", ApproveWaveRequest(rollout_id=rid, wave=1), RolloutReply)
    assert approved.message == "wave 1 approved"
    skipped = await commands.ok("upgrade.skip", SkipClusterRequest(rollout_id=rid, cluster_id="c1"), RolloutReply)
    assert "c1 skipped" in skipped.message and skipped.rollout.clusters.skipped == 1
    aborted = await commands.ok("upgrade.abort", AbortRolloutRequest(rollout_id=rid, reason="test"), RolloutReply)
    assert aborted.rollout.state is RolloutState.ABORTED and "being uncordoned" in aborted.message
    rolled = await commands.ok("upgrade.rollback", RollbackRequest(rollout_id=rid), RolloutReply)
    assert rolled.rollout.state is RolloutState.ROLLING_BACK and "control plane cannot be downgraded" in rolled.message


async def test_control_commands_refuse_what_the_state_does_not_allow(commands: Commands) -> None:
    await commands.fleet("c0")
    rid = (await start(commands)).rollout_id
    cases: list[tuple[str, Any, str, str]] = [
        ("upgrade.pause", PauseRolloutRequest(rollout_id="nope"), "not_found", "no rollout nope"),
        ("upgrade.status", RolloutStatusRequest(rollout_id="nope"), "not_found", "no rollout nope"),
        ("upgrade.approve", ApproveWaveRequest(rollout_id=rid, wave=7), "not_found", "has 2 wave(s)"),
        ("upgrade.retry", RetryRequest(rollout_id=rid), "conflict", "no failed cluster"),
        ("upgrade.retry", RetryRequest(rollout_id=rid, cluster_id="c0"), "conflict", "not Failed"),
        ("upgrade.skip", SkipClusterRequest(rollout_id=rid, cluster_id="zz"), "not_found", "not in rollout"),
        ("upgrade.status", RolloutStatusRequest(rollout_id=rid, cursor="x"), "invalid_field", "cursor"),
        ("upgrade.pause", {"rollout_id": "has.dot"}, "invalid_id", "rollout_id"),
    ]
    for verb, body, code, words in cases:
        error = await commands.error(verb, body)
        assert error["code"] == code and words in error["message"], (verb, error)
    # Resuming a rollout that runs is no conflict (a skip may have lifted its freeze): it says so.
    resumed = await commands.ok("upgrade.resume", ResumeRolloutRequest(rollout_id=rid), RolloutReply)
    assert resumed.message == "already Running: nothing to resume"
    await commands.ok("upgrade.abort", AbortRolloutRequest(rollout_id=rid), RolloutReply)
    error = await commands.error("upgrade.abort", AbortRolloutRequest(rollout_id=rid))
    assert error["code"] == "conflict" and "it is Aborted" in error["message"]
    error = await commands.error("upgrade.pause", PauseRolloutRequest(rollout_id=rid))
    assert error["code"] == "conflict"
