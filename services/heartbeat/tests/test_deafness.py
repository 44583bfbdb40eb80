"""Heartbeat's own bus outage holds verdicts: nodes it could not hear are not reported Unreachable for it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import nats.errors

from flotilla_contracts.v1.heartbeat import NodeHealth
from flotilla_heartbeat.deafness import Deafness, SlowConsumerWatch
from flotilla_heartbeat.health_state import Policy

if TYPE_CHECKING:
    from conftest import Fleet


class Link:
    def __init__(self) -> None:
        self.outages, self.up = 0, True

    def __call__(self) -> tuple[int, bool]:
        return self.outages, self.up


def test_a_link_that_is_down_or_went_down_holds_until_the_grace_after_it_was_last_seen_down() -> None:
    link = Link()
    deafness = Deafness(link)
    assert deafness.hold_until(10.0, 30.0) is None
    link.up, link.outages = False, 1
    assert deafness.hold_until(11.0, 30.0) == 41.0 and deafness.began(0)
    assert deafness.hold_until(15.0, 30.0) == 45.0 and not deafness.began(1), "still down: the hold moves on"
    link.up = True
    assert deafness.hold_until(16.0, 30.0) is None, "back up: the hold already given runs out on its own"
    link.outages = 2  # a blip between two looks: down and up again
    assert deafness.hold_until(20.0, 30.0) == 50.0


def test_nodes_silent_while_heartbeat_was_deaf_are_not_unreachable_before_the_grace(new_fleet: type[Fleet]) -> None:
    fleet = new_fleet(policy=Policy(startup_grace_s=30.0)).member("c1")
    for t in range(0, 40, 10):  # on time until t=30 (after the startup grace)
        fleet.at(float(t))
        fleet.send("c1", "n1")
    link = Link()
    deafness = Deafness(link)
    link.up, link.outages = False, 1  # heartbeat's bus link goes down at t=35, back at t=45
    for t in (35.0, 40.0, 45.0):
        until = deafness.hold_until(t, fleet.model.policy.startup_grace_s)
        assert until is not None
        fleet.model.hold(until)
        fleet.at(t)
    link.up = True
    fleet.at(70.0)  # n1 silent for 40 s (> 30 s unreachable) but heartbeat was deaf until t=45: held until 75
    assert [e.to for _, e in fleet.node_events("n1")] == [NodeHealth.READY]
    fleet.at(76.0)
    assert [e.to for _, e in fleet.node_events("n1")] == [NodeHealth.READY, NodeHealth.UNREACHABLE]


def test_heartbeats_dropped_for_the_service_hold_verdicts_until_the_grace_after_the_last_drop(
    new_fleet: type[Fleet],
) -> None:
    fleet = new_fleet(policy=Policy(startup_grace_s=30.0)).member("c1")
    for t in range(0, 40, 10):
        fleet.at(float(t))
        fleet.send("c1", "n1")
    watch = SlowConsumerWatch()
    deafness = Deafness(dropped=lambda: watch.dropped)
    assert deafness.hold_until(35.0, 30.0) is None, "no drop, no hold"
    watch(nats.errors.SlowConsumerError(subject="fleet.v1.hb.c1.n1", reply="", sid=1, sub=None))  # type: ignore[arg-type]
    until = deafness.hold_until(40.0, 30.0)
    assert until == 70.0
    fleet.model.hold(until)
    assert deafness.hold_until(45.0, 30.0) is None, "no new drop: the hold already given runs out on its own"
    fleet.at(65.0)  # n1 silent for 35 s (> 30 s unreachable), but a heartbeat of it may have been dropped
    assert [e.to for _, e in fleet.node_events("n1")] == [NodeHealth.READY]
    fleet.at(71.0)
    assert [e.to for _, e in fleet.node_events("n1")] == [NodeHealth.READY, NodeHealth.UNREACHABLE]


def test_only_dropped_heartbeats_count_partitioned_or_not() -> None:
    watch = SlowConsumerWatch()
    for subject in ("fleet.v1.hb.c1.n1", "fleet.v1.hbp.3.c1.n1", "fleet.v1.evt.node-health.c1.n1.changed", "_INBOX.x"):
        watch(nats.errors.SlowConsumerError(subject=subject, reply="", sid=1, sub=None))  # type: ignore[arg-type]
    assert watch.dropped == 2 and watch.last_subject == "fleet.v1.hbp.3.c1.n1"
