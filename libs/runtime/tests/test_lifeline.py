"""The lifeline's pure rules: reconnect back-off (first connections' attempts too), and what the probes answer for
each link state."""

from __future__ import annotations

import nats.errors
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.client import Client

from flotilla_runtime.lifeline import Backoff, Lifeline, LinkState, health_of


def test_an_expired_grant_is_renewed_at_once_then_attempts_back_off() -> None:
    backoff = Backoff(first_s=0.5, max_s=30.0, jitter=0.0)
    delays = [backoff.delay(n, refused=False, rand=0.5) for n in range(9)]
    assert delays == [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_refusals_back_off_further_than_an_unreachable_server() -> None:
    backoff = Backoff(first_s=0.5, max_s=30.0, refused_max_s=60.0, jitter=0.0)
    assert backoff.delay(50, refused=True, rand=0.5) == 60.0
    assert backoff.delay(50, refused=False, rand=0.5) == 30.0


@given(st.integers(min_value=1, max_value=10_000), st.booleans(), st.floats(min_value=0.0, max_value=1.0))
def test_every_delay_stays_within_its_jittered_bounds(failures: int, refused: bool, rand: float) -> None:
    backoff = Backoff()
    delay = backoff.delay(failures, refused, rand)
    ceiling = backoff.refused_max_s if refused else backoff.max_s
    assert backoff.first_s * (1 - backoff.jitter) - 1e-3 <= delay <= ceiling * (1 + backoff.jitter) + 1e-3


async def test_attempts_at_a_first_connection_back_off_like_reconnects() -> None:
    """nats-py tries a first connection again every 2 s, for ever; `Lifeline.connect` has it wait the back-off's
    delay instead (nats-py reads the wait again before each attempt), longer while the server refuses us."""
    link = Lifeline("first", backoff=Backoff(first_s=0.5, max_s=30.0, refused_max_s=60.0, jitter=0.0))
    link.first = client = Client()
    on_error = link.options()["error_cb"]
    waits = []
    for _ in range(4):
        await on_error(OSError("connection refused"))
        waits.append(client.options["reconnect_time_wait"])
    for _ in range(5):
        await on_error(nats.errors.Error("nats: 'Authorization Violation'"))
        waits.append(client.options["reconnect_time_wait"])
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    assert link.state is LinkState.REFUSED


def test_a_link_down_within_the_grace_is_still_ready_and_says_why() -> None:
    health = health_of(LinkState.RECONNECTING, since=100.0, reason="connection refused", now=110.0, grace_s=30.0)
    assert health.ready and health.live
    assert health.reason == "bus reconnecting for 10s: connection refused"


def test_a_link_down_past_the_grace_is_not_ready_but_live() -> None:
    health = health_of(LinkState.REFUSED, since=100.0, reason="deregistered?", now=131.0, grace_s=30.0)
    assert (health.ready, health.live) == (False, True)
    assert "refused for 31s" in health.reason


def test_a_closed_link_is_neither_ready_nor_live() -> None:
    health = health_of(LinkState.CLOSED, since=100.0, reason="NoServersError", now=100.0, grace_s=30.0)
    assert (health.ready, health.live) == (False, False)
    assert "closed for good" in health.reason
