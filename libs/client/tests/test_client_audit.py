"""The audit trail from event records: one entry per (actor, trace), what happened first, events no command caused
left out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from flotilla_client import audit
from flotilla_client.events import EventRecord, trace_id_of

T0 = datetime(2026, 12, 5, 3, 0, tzinfo=UTC)
TRACE_A, TRACE_B = "a" * 32, "b" * 32


def record(seq: int, subject: str, actor: str = "", trace: str = "", data: Any = None) -> EventRecord:
    return EventRecord(
        subject=f"fleet.v1.evt.{subject}",
        seq=seq,
        time=T0 + timedelta(seconds=seq),
        data=data or {},
        stream="FLEET_EVENTS",
        actor=actor,
        trace_id=trace,
    )


def test_one_entry_per_command_with_what_it_did_first() -> None:
    records = [
        record(1, "rollout.r-1.started", "frank", TRACE_A, {"rollout_id": "r-1"}),
        record(2, "rollout-wave.r-1.0.state-changed", "frank", TRACE_A, {"to": "Running"}),
        record(3, "node-health.c1.n1.changed"),  # no command caused it
        record(4, "rollout.r-1.state-changed", "erin", TRACE_B, {"to": "Paused", "reason": "x", "message": "oncall"}),
        record(5, "cluster.c1.approved", "admin", "", {}),
        record(6, "cluster.c2.approved", "admin", "", {}),  # untraced: an entry each
    ]
    got = [(e.actor, e.object, e.action, e.events, e.detail) for e in audit.entries(records)]
    assert got == [
        ("frank", "rollout/r-1", "started", 2, ""),
        ("erin", "rollout/r-1", "Paused", 1, "oncall"),
        ("admin", "cluster/c1", "approved", 1, ""),
        ("admin", "cluster/c2", "approved", 1, ""),
    ]
    assert [e.actor for e in audit.entries(records, actor="erin")] == ["erin"]
    assert audit.entries(records)[0].time == T0 + timedelta(seconds=1)


def test_the_trace_id_comes_from_the_traceparent() -> None:
    assert trace_id_of(f"00-{TRACE_A}-00f067aa0ba902b7-01") == TRACE_A
    assert trace_id_of("") == "" and trace_id_of("garbage") == ""
