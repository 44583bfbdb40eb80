"""The invariant checker itself: a clean log passes, and a small log breaking each invariant is caught."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from rollout_invariants import check, final_states, kubelet_skew

Event = tuple[str, str, dict[str, Any]]
T0 = 1_700_000_000


def at(seconds: float) -> str:
    return datetime.fromtimestamp(T0 + seconds, UTC).isoformat()


def plan(
    cp: str = "v1.29.6", workers: str = "v1.29.6", target: str = "v1.30.4", actions: tuple[str, ...] = ("apply",)
) -> dict[str, Any]:
    cps = [{"node_id": f"cp{i}", "from_version": cp, "kubeadm_action": a} for i, a in enumerate(actions)]
    return {
        "rollout_id": "r1",
        "plan": {
            "target_version": target,
            "waves": [{"clusters": [{
                "cluster_id": "c1", "from_version": cp, "target_version": target, "control_plane": cps,
                "workers": [{"node_id": "w1", "from_version": workers}, {"node_id": "w2", "from_version": workers}],
            }]}],
        },
    }  # fmt: skip


def started(**kwargs: Any) -> Event:
    return ("fleet.v1.evt.rollout.r1.started", "upgrade.RolloutStarted/v1", plan(**kwargs))


def move(node: str, to: str, direction: str = "forward", kubelet: str | None = None, reason: str = "") -> Event:
    data = {"rollout_id": "r1", "cluster_id": "c1", "node_id": node, "to": to, "direction": direction,
            "kubelet_version": kubelet, "reason": reason}  # fmt: skip
    return ("fleet.v1.evt.rollout-node.r1.c1." + node, "upgrade.NodeStepStateChanged/v1", data)


def report(
    node: str, step: str, t: float, *, outcome: str = "succeeded", epoch: int = 1, command: str = "", **more: Any
) -> Event:
    data = {"command_id": command or f"k-{node}-{step}-{epoch}", "rollout_id": "r1", "cluster_id": "c1",
            "node_id": node, "step": step, "outcome": outcome, "epoch": epoch, "occurred_at": at(t),
            **more}  # fmt: skip
    return ("fleet.v1.evt.node-step.c1." + node, "agent.NodeStepReported/v1", data)


def upgrade_node(node: str, target: str = "v1.30.4", t: float = 0.0) -> list[Event]:
    return [
        report(node, "cordon", t), move(node, "Cordoned"),
        report(node, "drain", t + 1), move(node, "Drained"),
        report(node, "upgrade", t + 2), move(node, "Upgraded"),
        report(node, "verify", t + 3, kubelet_version=target), move(node, "Verified", kubelet=target),
        report(node, "uncordon", t + 4), move(node, "Uncordoned"),
    ]  # fmt: skip


def violations(events: list[Event], max_unavailable: int = 1, max_clusters: int = 1) -> list[str]:
    return check(events, max_unavailable=max_unavailable, max_clusters=max_clusters).violations


def caught(events: list[Event], invariant: str, max_unavailable: int = 1, max_clusters: int = 1) -> bool:
    return any(v.startswith(invariant + ":") for v in violations(events, max_unavailable, max_clusters))


def clean() -> list[Event]:
    return [started(), *upgrade_node("cp0"), *upgrade_node("w1", t=10), *upgrade_node("w2", t=20)]


def test_a_clean_rollout_passes_and_ends_every_node_at_the_target() -> None:
    events = clean()
    verdict = check(events, max_unavailable=1, max_clusters=1)
    assert verdict.violations == []
    assert verdict.max_unavailable_seen == {"c1": 1}
    assert final_states(events) == {("c1", n): ("Uncordoned", "v1.30.4") for n in ("cp0", "w1", "w2")}


def test_i1_too_many_nodes_out_at_once() -> None:
    events = [started(), *upgrade_node("cp0"), move("w1", "Cordoned"), move("w2", "Cordoned")]
    assert caught(events, "I1")
    assert not caught(events, "I1", max_unavailable=2)


def test_i1_a_cordon_while_another_node_is_not_ready_counts_that_node() -> None:
    down = ("s", "heartbeat.NodeHealthChanged/v1", {"cluster_id": "c1", "node_id": "w2", "to": "NotReady",
                                                   "occurred_at": at(5)})  # fmt: skip
    events = [started(), *upgrade_node("cp0"), down, report("w1", "cordon", 20), move("w1", "Cordoned")]
    assert caught(events, "I1")
    back = ("s", "heartbeat.NodeHealthChanged/v1", {"cluster_id": "c1", "node_id": "w2", "to": "Ready",
                                                   "occurred_at": at(8)})  # fmt: skip
    assert not caught([*events[:-2], back, *events[-2:]], "I1")


def test_i1_too_many_clusters_in_progress() -> None:
    def cluster(c: str) -> Event:
        return ("s", "upgrade.ClusterRolloutStateChanged/v1", {"rollout_id": "r1", "cluster_id": c,
                                                               "to": "UpgradingWorkers"})  # fmt: skip

    events = [started(), cluster("a"), cluster("b")]
    assert caught(events, "I1")
    assert violations(events, max_clusters=2) == []


def test_i2_a_worker_before_the_control_plane() -> None:
    assert caught([started(), *upgrade_node("w1")], "I2", max_unavailable=2)


def test_i2_two_control_plane_nodes_out_at_once() -> None:
    events = [started(actions=("apply", "node")), move("cp0", "Cordoned"), move("cp1", "Cordoned")]
    assert caught(events, "I2", max_unavailable=3)


def test_i2_kubeadm_apply_only_on_the_first_control_plane_node() -> None:
    assert caught([started(actions=("node", "apply"))], "I2")
    assert violations([started(actions=("apply", "node"))]) == []


def test_i3_the_api_server_never_skips_a_minor() -> None:
    assert caught([started(cp="v1.28.9", workers="v1.28.9", target="v1.30.4")], "I3")


def test_i3_a_worker_kubelet_newer_than_the_api_server() -> None:
    events = [started(), report("w1", "verify", 1, kubelet_version="v1.30.4")]
    assert caught(events, "I3")


def test_i3_kubelets_below_1_25_may_be_only_two_minors_older() -> None:
    # The control plane moves v1.24 -> v1.25 over v1.22 workers: 3 minors is allowed from v1.25 on, not below.
    events = [started(cp="v1.24.17", workers="v1.22.17", target="v1.25.16"),
              *upgrade_node("cp0", target="v1.25.16")]  # fmt: skip
    assert caught(events, "I3")
    events = [started(cp="v1.24.17", workers="v1.23.17", target="v1.25.16"),
              *upgrade_node("cp0", target="v1.25.16")]  # fmt: skip
    assert not caught(events, "I3")


@pytest.mark.parametrize(
    ("kubelet", "api_server", "allowed"),
    [
        ("v1.22.0", "v1.24.3", True),  # two older, below 1.25
        ("v1.22.0", "v1.25.0", False),  # three older, below 1.25
        ("v1.25.0", "v1.28.0", True),  # three older, from 1.25
        ("v1.26.1", "v1.30.0", False),  # four older
        ("v1.30.4", "v1.30.2", True),  # same minor, newer patch
        ("v1.31.0", "v1.30.9", False),  # newer minor
    ],
)
def test_the_kubelet_skew_rule(kubelet: str, api_server: str, allowed: bool) -> None:
    assert (kubelet_skew(kubelet, api_server) is None) is allowed


def test_i4_moving_backwards_without_rollback() -> None:
    events = [started(), move("cp0", "Cordoned"), move("cp0", "Drained"), move("cp0", "Cordoned")]
    assert caught(events, "I4")
    rolled = [started(), move("cp0", "Cordoned"), move("cp0", "Drained"), move("cp0", "Cordoned", "rollback")]
    assert violations(rolled) == []
    retried = [started(), move("cp0", "Cordoned"), move("cp0", "Failed"), move("cp0", "Cordoned", reason="Retry")]
    assert violations(retried) == []
    assert caught([started(), move("cp0", "Cordoned"), move("cp0", "Failed"), move("cp0", "Drained")], "I4")


def test_i4_a_retry_may_restart_a_node_given_back_unupgraded_but_not_one_that_finished() -> None:
    # wound down when another node of its cluster failed: uncordoned before it was Verified, then retried
    given_back = [started(), move("w1", "Cordoned"), move("w1", "Drained"), move("w1", "Uncordoned")]
    assert violations([*given_back, move("w1", "Pending", reason="Retry")]) == []
    assert caught([*given_back, move("w1", "Pending")], "I4"), "only a retry may restart it"
    finished = [started(), move("w1", "Cordoned"), move("w1", "Verified"), move("w1", "Uncordoned")]
    assert caught([*finished, move("w1", "Pending", reason="Retry")], "I4"), "a finished node is never reopened"


def test_i4_a_step_that_runs_twice() -> None:
    ran = report("w1", "drain", 1, command="k1")
    assert caught([started(), ran, ran], "I4")
    replay = report("w1", "drain", 2, command="k1", replayed=True)
    assert violations([started(), ran, replay]) == []


def test_i6_an_agent_takes_a_command_of_an_older_epoch() -> None:
    events = [started(), report("cp0", "cordon", 1, epoch=2), report("cp0", "drain", 2, epoch=1)]
    assert caught(events, "I6")
    refused = [started(), report("cp0", "cordon", 1, epoch=2), report("cp0", "drain", 2, epoch=1, outcome="refused")]
    assert not caught(refused, "I6")


def test_i7_a_freeze_without_a_reason() -> None:
    frozen = ("s", "upgrade.RolloutFrozen/v1", {"rollout_id": "r1", "freeze": {"reason": "LostContact", "message": ""}})
    assert caught([started(), frozen], "I7")


def test_i7_a_cordon_that_begins_while_the_rollout_is_frozen() -> None:
    def rollout_to(state: str, t: float) -> Event:
        return ("s", "upgrade.RolloutStateChanged/v1", {"rollout": {"rollout_id": "r1"}, "to": state,
                                                         "occurred_at": at(t)})  # fmt: skip

    events = [started(), *upgrade_node("cp0"), rollout_to("Frozen", 10), report("w1", "cordon", 30)]
    assert caught(events, "I7")
    assert not caught([*events[:-1], report("w1", "cordon", 12)], "I7")  # issued before the freeze
    assert not caught([*events[:-1], rollout_to("Running", 20), report("w1", "cordon", 30)], "I7")


def test_i9_uncordoning_a_node_we_never_cordoned() -> None:
    assert caught([started(), move("cp0", "Uncordoned")], "I9")


def test_i9_uncordoning_a_node_someone_else_had_cordoned() -> None:
    events = [started(), report("cp0", "cordon", 1, was_cordoned=True), move("cp0", "Cordoned"),
              report("cp0", "uncordon", 2)]  # fmt: skip
    assert caught(events, "I9")
