"""The health model on an injected clock: detection, hysteresis, grace, clusters, skew."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flotilla_contracts.v1.common import NodeConditionType
from flotilla_contracts.v1.heartbeat import ClusterHealth, ClusterHealthChanged, NodeHealth
from flotilla_heartbeat.health_state import Policy

if TYPE_CHECKING:
    from conftest import Fleet


def run_on_time(fleet: Fleet, nodes: list[str], until: float, every: float = 10.0, start: float = 0.0) -> None:
    t = start
    while t <= until:
        fleet.at(t)
        for node in nodes:
            fleet.send("c1", node)
        t += every


def test_first_heartbeat_makes_a_node_ready_and_the_cluster_ready(new_fleet: type[Fleet]) -> None:
    fleet = new_fleet().member("c1")
    fleet.send("c1", "n1")
    fleet.at(0.2)
    kinds = [(type(e).__name__, e.to) for _, e in fleet.events]
    assert kinds == [("NodeHealthChanged", NodeHealth.READY), ("ClusterHealthChanged", ClusterHealth.READY)]


def test_a_stopped_node_is_unreachable_after_missed_intervals_then_lost(new_fleet: type[Fleet]) -> None:
    fleet = new_fleet().member("c1")
    run_on_time(fleet, ["n1", "n2"], until=50)
    fleet.events.clear()
    fleet.at(60)
    fleet.send("c1", "n1")  # n2 stopped after t=50
    for t in range(70, 400, 10):
        fleet.at(t)
        fleet.send("c1", "n1")
    changes = fleet.node_events("n2")
    assert [e.to for _, e in changes] == [NodeHealth.UNREACHABLE, NodeHealth.LOST]
    unreachable_at = changes[0][0]
    assert 50 + 30 <= unreachable_at <= 50 + 30 + 1.0
    assert changes[1][0] >= 50 + 300
    cluster = [e for _, e in fleet.events if isinstance(e, ClusterHealthChanged)]
    assert cluster[0].to is ClusterHealth.DEGRADED and "Unreachable" in cluster[0].message
    assert not fleet.node_events("n1")


def test_no_node_heard_makes_the_cluster_unreachable(new_fleet: type[Fleet]) -> None:
    fleet = new_fleet().member("c1")
    fleet.send("c1", "n1")
    fleet.at(40)
    assert [e.to for _, e in fleet.events if isinstance(e, ClusterHealthChanged)] == [
        ClusterHealth.READY,
        ClusterHealth.UNREACHABLE,
    ]


def test_not_ready_as_reported_and_api_server_failures_degrade_the_cluster(new_fleet: type[Fleet]) -> None:
    fleet = new_fleet().member("c1")
    fleet.send("c1", "cp1", api_ok=True)
    fleet.send("c1", "w1")
    fleet.at(1)
    fleet.send("c1", "w1", ready=False)
    fleet.at(2)
    assert fleet.node_events("w1")[-1][1].to is NodeHealth.NOT_READY
    degraded = [e for _, e in fleet.events if isinstance(e, ClusterHealthChanged)][-1]
    assert degraded.to is ClusterHealth.DEGRADED and degraded.reason == "NodesNotReady"
    fleet2 = new_fleet().member("c1")
    fleet2.send("c1", "cp1", api_ok=True)
    fleet2.at(1)
    fleet2.send("c1", "cp1", api_ok=False)
    fleet2.at(2)
    last = [e for _, e in fleet2.events if isinstance(e, ClusterHealthChanged)][-1]
    assert last.to is ClusterHealth.DEGRADED and last.reason == "ApiServerNotReady"
    assert last.api_servers_total == 1 and last.api_servers_ready == 0


def test_recovery_is_held_for_the_flap_window_and_flapping_is_a_condition(new_fleet: type[Fleet]) -> None:
    fleet = new_fleet().member("c1")
    fleet.send("c1", "n1")
    for t in range(1, 61):  # NotReady / Ready every second for a minute
        fleet.at(t)
        fleet.send("c1", "n1", ready=t % 2 == 0)
    changes = [e.to for _, e in fleet.node_events("n1")]
    assert changes[:2] == [NodeHealth.READY, NodeHealth.NOT_READY]
    assert len(changes) <= 2 + 2 * 2  # at most one pair per 30 s window
    node = fleet.model.clusters["c1"].nodes["n1"]
    assert NodeConditionType.FLAPPING in [c.type for c in fleet.model.conditions(node)]
    for t in range(62, 200, 5):  # steady again: one recovery, flapping clears
        fleet.at(t)
        fleet.send("c1", "n1")
    assert fleet.node_events("n1")[-1][1].to is NodeHealth.READY
    assert NodeConditionType.FLAPPING not in [c.type for c in fleet.model.conditions(node)]


def test_startup_grace_declares_nothing_unreachable_early(new_fleet: type[Fleet]) -> None:
    fleet = new_fleet(policy=Policy(startup_grace_s=120.0)).member("c1")
    fleet.send("c1", "n1")
    fleet.at(119)
    assert [e.to for _, e in fleet.node_events("n1")] == [NodeHealth.READY]
    fleet.at(121)
    assert [e.to for _, e in fleet.node_events("n1")] == [NodeHealth.READY, NodeHealth.UNREACHABLE]


def test_clock_skew_is_a_condition_not_a_transition(new_fleet: type[Fleet]) -> None:
    fleet = new_fleet().member("c1")
    fleet.send("c1", "n1", skew=-120.0)
    fleet.at(1)
    node = fleet.model.clusters["c1"].nodes["n1"]
    skew = [c for c in fleet.model.conditions(node) if c.type is NodeConditionType.CLOCK_SKEW]
    assert skew and "-120.0s" in skew[0].message  # the agent is 120 s behind
    assert [e.to for _, e in fleet.node_events()] == [NodeHealth.READY]


def test_heartbeats_of_clusters_not_tracked_create_no_state(new_fleet: type[Fleet]) -> None:
    fleet = new_fleet().member("c1")
    assert fleet.send("stranger", "n1") is False
    assert "stranger" not in fleet.model.clusters
    fleet.model.remove_cluster("c1")
    assert fleet.send("c1", "n1") is False


def test_a_node_in_inventory_that_never_reports_becomes_unreachable(new_fleet: type[Fleet]) -> None:
    fleet = new_fleet().member("c1")
    fleet.model.add_node("c1", "n9", "n9", 0.0)
    fleet.at(31)
    assert [e.to for _, e in fleet.node_events("n9")] == [NodeHealth.UNREACHABLE]
