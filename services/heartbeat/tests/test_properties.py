"""Hypothesis properties of the health model: no false alarms, bounded detection, damped flapping, bad input."""

from __future__ import annotations

import random
from collections import Counter
from typing import TYPE_CHECKING, Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.msg import Msg

from flotilla_client.loadgen import template
from flotilla_contracts.v1.heartbeat import NodeHealth
from flotilla_heartbeat.domain import HealthModel
from flotilla_heartbeat.health_state import SEVERITY, Policy
from flotilla_heartbeat.ingest import Ingest
from flotilla_heartbeat.noise import NoiseWindow

if TYPE_CHECKING:
    from conftest import Fleet

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
POLICY = Policy(interval_s=10.0, missed_intervals=3, startup_grace_s=0.0, flap_window_s=30.0)


@FAST
@given(gaps=st.lists(st.floats(min_value=0.05, max_value=19.0), min_size=5, max_size=60))
def test_a_node_that_sends_on_time_never_transitions(new_fleet: type[Fleet], gaps: list[float]) -> None:
    """Any gap under (missed - 1) x interval: jittery, bursty, but on time. Only the first Ready is published."""
    fleet = new_fleet(policy=POLICY).member("c1")
    t = 0.0
    fleet.send("c1", "n1")
    for gap in gaps:
        t += gap
        fleet.at(t)
        fleet.send("c1", "n1")
    fleet.at(t + 5)
    assert [e.to for _, e in fleet.node_events("n1")] == [NodeHealth.READY]


@FAST
@given(
    gaps=st.lists(st.floats(min_value=0.1, max_value=12.0), min_size=1, max_size=20),
    tick=st.sampled_from([0.05, 0.1, 0.25, 0.5]),
)
def test_a_stopped_node_is_unreachable_within_missed_intervals_plus_one_second(
    new_fleet: type[Fleet], gaps: list[float], tick: float
) -> None:
    fleet = new_fleet(policy=POLICY, tick_s=tick).member("c1")
    t = 0.0
    fleet.send("c1", "n1")
    for gap in gaps:
        t += gap
        fleet.at(t)
        fleet.send("c1", "n1")
    last_heard = t
    fleet.at(t + 40)
    unreachable = [at for at, e in fleet.node_events("n1") if e.to is NodeHealth.UNREACHABLE]
    assert len(unreachable) == 1
    assert last_heard + 30 <= unreachable[0] <= last_heard + 30 + 1.0


@FAST
@given(
    steps=st.lists(
        st.tuples(st.floats(min_value=0.1, max_value=45.0), st.booleans(), st.booleans()), min_size=5, max_size=80
    )
)
def test_a_flapping_node_yields_at_most_one_transition_pair_per_window(
    new_fleet: type[Fleet], steps: list[tuple[float, bool, bool]]
) -> None:
    """Random silences and Ready/NotReady reports: every improvement comes >= one window after the last worsening."""
    fleet = new_fleet(policy=POLICY).member("c1")
    t = 0.0
    fleet.send("c1", "n1")
    for gap, ready, send in steps:
        t += gap
        fleet.at(t)
        if send:
            fleet.send("c1", "n1", ready=ready)
    fleet.at(t + 100)
    changes = fleet.node_events("n1")
    last_worse = None
    for at, event in changes:
        if event.from_ is not None and SEVERITY[event.to] < SEVERITY[event.from_]:
            assert last_worse is not None and at - last_worse >= POLICY.flap_window_s - 1e-6
        else:
            last_worse = at
    # so a worsening, an improvement and the next worsening never fit in one window: at most one pair per window


def _msg(subject: str, data: bytes, headers: dict[str, str] | None = None) -> Msg:
    return Msg(_client=None, subject=subject, data=data, headers=headers)  # type: ignore[arg-type]


GARBAGE: list[tuple[str, Any]] = [
    ("malformed", lambda body, node: body[: len(body) // 2]),
    ("invalid_field", lambda body, node: body.replace(b'"seq":1,', b'"seq":-1,')),
    ("invalid_field", lambda body, node: body.replace(b'"kubelet_version":"v1.30.4"', b'"kubelet_version":"1e9"')),
    ("invalid_id", lambda body, node: body.replace(f'"node_id":"{node}"'.encode(), b'"node_id":"a.b"')),
    ("subject_mismatch", lambda body, node: body.replace(f'"node_id":"{node}"'.encode(), b'"node_id":"other"')),
    ("too_large", lambda body, node: body + b" " * 300_000),
    ("malformed", lambda body, node: body[:-1] + b',"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"),  # too deep
]


@FAST
@given(seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_ten_percent_garbage_is_dropped_by_reason_and_health_stays_right(seed: int) -> None:
    rng = random.Random(seed)
    model = HealthModel(POLICY, started=0.0, wall_offset=1.7e9)
    model.add_cluster("c1")
    noise = NoiseWindow(60.0)
    clock = [0.0]
    ingest = Ingest(
        model, noise, lambda c: msgspec.UNSET, max_bytes=256 * 1024, now=lambda: (clock[0], clock[0] + 1.7e9)
    )  # type: ignore[arg-type,return-value]
    nodes = [f"n{i}" for i in range(20)]
    expected: Counter[str] = Counter()
    for round_ in range(8):
        clock[0] = round_ * 10.0
        for node in nodes:
            head, middle, tail = template("c1", node)
            body = b"".join((head, b"1", middle, b"2023-11-14T22:13:20Z", tail))
            subject = f"fleet.v1.hb.c1.{node}"
            if rng.random() < 0.1:
                reason, spoil = rng.choice(GARBAGE)
                expected[reason] += 1
                ingest._buffer.append(_msg(subject, spoil(body, node)))
            if rng.random() < 0.02:
                expected["wrong_schema"] += 1
                ingest._buffer.append(_msg(subject, body, {"Flotilla-Schema": "registration.JoinRequest/v1"}))
            ingest._buffer.append(_msg(subject, body))
        ingest.flush()
        model.tick(clock[0] + 0.1, clock[0] + 1.7e9)
    assert dict(ingest.dropped) == dict(expected)
    assert ingest.applied == 8 * 20
    states = Counter(node.state for node in model.clusters["c1"].nodes.values())
    assert states == {NodeHealth.READY: 20}
