"""The event streams: every event subject in exactly one, members' subjects only in the bounded FLEET_REPORTS."""

from __future__ import annotations

import itertools

import pytest

from flotilla_contracts import catalogue, permissions, subjects
from flotilla_contracts.catalogue import Kind
from flotilla_contracts.streams import (
    EVENT_STREAMS,
    FLEET_EVENTS,
    FLEET_REPORTS,
    STREAMS,
    StreamSpec,
    event_stream_of,
    event_streams_for,
    subject_covers,
    subjects_overlap,
)
from flotilla_contracts.subjects import Service

EVENTS = [op for op in catalogue.OPERATIONS if op.kind is Kind.EVENT]


def capturing(subject: str) -> list[StreamSpec]:
    return [s for s in EVENT_STREAMS if any(subject_covers(own, subject) for own in s.subjects)]


@pytest.mark.parametrize("op", EVENTS, ids=lambda op: op.subject)
def test_each_event_lands_in_one_stream_and_members_events_in_the_bounded_one(op: catalogue.Operation) -> None:
    member_event = op.owner is Service.NODE_AGENT  # an agent's dead letters name the service node-agent
    services = [Service.NODE_AGENT] if member_event else list(Service)
    for service in services:
        subject = op.fill(**{name: (service.value if name == "service" else "x") for name in op.placeholders})
        member = member_event or subject.startswith("fleet.v1.evt.dead-letter.node-agent.")  # node-agent's own
        assert capturing(subject) == [FLEET_REPORTS if member else FLEET_EVENTS], subject


def test_no_two_streams_overlap() -> None:
    """nats-server refuses a stream whose subjects overlap another's."""
    for a, b in itertools.combinations(STREAMS, 2):
        for x, y in itertools.product(a.subjects, b.subjects):
            assert not subjects_overlap(x, y), (a.name, x, b.name, y)


def test_what_members_may_publish_is_captured_by_fleet_reports_only() -> None:
    grants = [permissions.cluster_grant("c1"), permissions.node_grant("c1", "n1")]
    published = {p for g in grants for p in g.publish if p.startswith(subjects.EVT_PREFIX + ".")}
    assert published
    for pattern in published:
        assert event_stream_of([pattern]) is FLEET_REPORTS, pattern
        assert event_streams_for(pattern) == (FLEET_REPORTS,), pattern


def test_fleet_reports_is_bounded_and_fleet_events_keeps_everything() -> None:
    assert FLEET_REPORTS.max_msgs_per_subject > 0 and FLEET_REPORTS.max_bytes > 0 and FLEET_REPORTS.max_age_s > 0
    assert (FLEET_EVENTS.max_msgs_per_subject, FLEET_EVENTS.max_bytes, FLEET_EVENTS.max_age_s) == (-1, -1, 0.0)


def test_a_filter_reads_the_streams_it_may_match() -> None:
    assert event_streams_for(subjects.ALL_EVENTS) == (FLEET_EVENTS, FLEET_REPORTS)
    assert event_streams_for("fleet.v1.evt.dead-letter.>") == (FLEET_EVENTS, FLEET_REPORTS)
    assert event_streams_for("fleet.v1.evt.node-step.>") == (FLEET_REPORTS,)
    assert event_streams_for("fleet.v1.evt.rollout-node.>") == (FLEET_EVENTS,)
    assert event_streams_for("fleet.v1.evt.*.c1.>") == (FLEET_EVENTS, FLEET_REPORTS)
    assert event_streams_for("fleet.v1.evt.nothing.>") == ()
    with pytest.raises(ValueError, match="not all within one event stream"):
        event_stream_of(["fleet.v1.evt.cluster.>", "fleet.v1.evt.applied.>"])


@pytest.mark.parametrize(
    ("pattern", "inner", "covers", "overlaps"),
    [
        ("a.>", "a.b.c", True, True),
        ("a.>", "a", False, False),
        ("a.*.c", "a.b.c", True, True),
        ("a.b.c", "a.*.c", False, True),
        ("a.*", "a.>", False, True),
        ("a.>", "a.*.>", True, True),
        ("a.b", "a.c", False, False),
        ("a.b.>", "a.b", False, False),
    ],
)
def test_subject_patterns(pattern: str, inner: str, covers: bool, overlaps: bool) -> None:
    assert subject_covers(pattern, inner) is covers
    assert subjects_overlap(pattern, inner) is overlaps
    assert subjects_overlap(inner, pattern) is overlaps
