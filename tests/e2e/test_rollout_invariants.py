"""The invariant checker itself: it must catch each violation it claims to catch."""

from __future__ import annotations

from typing import Any

from rollout_invariants import check

PLAN = {
    "plan": {
        "waves": [
            {"clusters": [{"cluster_id": "c1", "control_plane": [{"node_id": "cp"}], "workers": [{"node_id": "w1"},
                                                                                            {"node_id": "w2"}]}]}
        ]
    }
}  # fmt: skip


def started() -> tuple[str, str, dict[str, Any]]:
    return ("fleet.v1.evt.rollout.r1.started", "upgrade.RolloutStarted/v1", PLAN)


def move(node: str, to: str, direction: str = "forward") -> tuple[str, str, dict[str, Any]]:
    data = {"rollout_id": "r1", "cluster_id": "c1", "node_id": node, "to": to, "direction": direction}
    return ("fleet.v1.evt.rollout-node.r1.c1." + node, "upgrade.NodeStepStateChanged/v1", data)


def upgrade_node(node: str) -> list[tuple[str, str, dict[str, Any]]]:
    return [move(node, s) for s in ("Cordoned", "Drained", "Upgraded", "Verified", "Uncordoned")]


def test_a_clean_rollout_passes() -> None:
    events = [started(), *upgrade_node("cp"), *upgrade_node("w1"), *upgrade_node("w2")]
    assert check(events, max_unavailable=1, max_clusters=1).violations == []


def test_too_many_nodes_out_at_once_is_an_i1_violation() -> None:
    events = [started(), *upgrade_node("cp"), move("w1", "Cordoned"), move("w2", "Cordoned")]
    assert any(v.startswith("I1") for v in check(events, max_unavailable=1, max_clusters=1).violations)


def test_a_worker_before_the_control_plane_is_an_i2_violation() -> None:
    events = [started(), *upgrade_node("w1")]
    assert any(v.startswith("I2") for v in check(events, max_unavailable=2, max_clusters=1).violations)


def test_moving_backwards_without_rollback_is_an_i4_violation() -> None:
    events = [started(), move("cp", "Cordoned"), move("cp", "Drained"), move("cp", "Cordoned")]
    assert any(v.startswith("I4") for v in check(events, max_unavailable=1, max_clusters=1).violations)
    rolled = [started(), move("cp", "Cordoned"), move("cp", "Drained"), move("cp", "Cordoned", "rollback")]
    assert check(rolled, max_unavailable=1, max_clusters=1).violations == []


def test_uncordoning_a_node_we_never_cordoned_is_an_i9_violation() -> None:
    events = [started(), move("cp", "Uncordoned")]
    assert any(v.startswith("I9") for v in check(events, max_unavailable=1, max_clusters=1).violations)


def test_a_step_that_runs_twice_is_an_i4_violation() -> None:
    ran = {"command_id": "k1", "step": "drain", "node_id": "w1", "outcome": "succeeded", "replayed": False}
    events = [started(), ("s", "agent.NodeStepReported/v1", ran), ("s", "agent.NodeStepReported/v1", ran)]
    assert any("ran twice" in v for v in check(events, max_unavailable=1, max_clusters=1).violations)
    replay = {**ran, "replayed": True}
    events = [started(), ("s", "agent.NodeStepReported/v1", ran), ("s", "agent.NodeStepReported/v1", replay)]
    assert check(events, max_unavailable=1, max_clusters=1).violations == []


def test_too_many_clusters_in_progress_is_reported() -> None:
    def cluster(c: str) -> tuple[str, str, dict[str, Any]]:
        return ("s", "upgrade.ClusterRolloutStateChanged/v1", {"rollout_id": "r1", "cluster_id": c,
                                                               "to": "UpgradingWorkers"})  # fmt: skip

    events = [started(), cluster("a"), cluster("b")]
    assert check(events, max_unavailable=1, max_clusters=1).violations
    assert check(events, max_unavailable=1, max_clusters=2).violations == []
