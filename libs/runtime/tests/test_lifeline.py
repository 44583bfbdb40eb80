"""The lifeline: reconnect back-off (first connections' attempts too, against a real nats-server), the login
gate, and what the probes answer for each link state."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.client import Client

from flotilla_client.natsserver import NatsServer, free_port
from flotilla_runtime.lifeline import Backoff, Lifeline, LinkState, health_of
from flotilla_runtime.logins import LoginGate
from flotilla_testkit import eventually


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


@given(st.integers(min_value=1, max_value=10_000), st.booleans(), st.floats(min_value=0.0, max_value=1.0))
def test_first_attempts_spread_over_the_whole_interval(failures: int, refused: bool, rand: float) -> None:
    backoff = Backoff()
    ceiling = backoff.refused_max_s if refused else backoff.max_s
    assert 0.0 <= backoff.spread(failures, refused, rand) <= ceiling
    assert backoff.spread(failures, refused, 0.0) == 0.0


async def test_first_attempts_back_off_outside_the_gate_until_the_server_is_up(tmp_path: Path) -> None:
    """nats-py tries a first connection again every 2 s, for ever; `Lifeline.connect` tries once at a time, backs
    off between attempts (without holding its place among the process's logins in flight) and connects as soon as
    the server is up."""
    port = free_port()
    gate = LoginGate(1)
    link = Lifeline("first", backoff=Backoff(first_s=0.05, max_s=0.2), rand=lambda: 1.0, gate=gate)
    attempt = asyncio.create_task(link.connect(f"nats://127.0.0.1:{port}", connect_timeout=2))
    server = NatsServer(state_dir=tmp_path / "nats", port=port, log_file=tmp_path / "nats-server.log")
    try:
        await eventually(lambda: link.failures >= 3, "three first attempts failed")
        assert link.state is LinkState.RECONNECTING and not attempt.done()
        async with asyncio.timeout(5):  # the one place is free while the lifeline backs off
            async with gate:
                pass
        server.start()
        client = await asyncio.wait_for(attempt, 30)
        try:
            assert client.is_connected and link.state is LinkState.CONNECTED
            assert gate.peak == 1 and gate.in_flight == 0
            assert client.options["allow_reconnect"] and client.options["max_reconnect_attempts"] == -1
        finally:
            await client.close()
    finally:
        attempt.cancel()
        server.stop()


def logins_holding(gate: LoginGate, count: int, release: asyncio.Event) -> list[asyncio.Task[None]]:
    """`count` logins through `gate`, each holding its place until `release` is set."""

    async def login() -> None:
        async with gate:
            await release.wait()

    return [asyncio.create_task(login()) for _ in range(count)]


async def test_a_gate_lets_its_limit_in_and_the_rest_wait() -> None:
    gate = LoginGate(3)
    release = asyncio.Event()
    logins = logins_holding(gate, 10, release)
    await eventually(lambda: gate.waiting == 7, "seven logins waiting")
    assert (gate.in_flight, gate.admitted) == (3, 3)
    release.set()
    await asyncio.gather(*logins)
    assert (gate.in_flight, gate.admitted, gate.peak, gate.waiting) == (0, 10, 3, 0)


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


def test_the_window_doubles_while_logins_are_fast_then_halves_on_a_slow_one() -> None:
    gate = LoginGate(64, floor=2, slow_s=2.0)
    assert gate.window == 8
    for _ in range(8):
        gate.took(0.1, now=0.0)
    assert gate.window == 16, "slow start: one more place per fast login"
    gate.took(3.0, now=1.0)
    assert gate.window == 8 and gate.slow == 1
    gate.took(4.9, now=1.5)  # within slow_s of the last cut: the same congestion, not cut again
    assert gate.window == 8
    for _ in range(8):
        gate.took(0.1, now=2.0)
    assert 8.9 < gate.window < 9.0, "after congestion: about one more place per window of fast logins"


def test_the_window_stays_between_its_floor_and_its_limit() -> None:
    gate = LoginGate(10, floor=3, slow_s=2.0)
    for second in range(20):
        gate.took(6.0, now=10.0 * second)
    assert gate.window == 3
    for _ in range(1_000):
        gate.took(0.01, now=500.0)
    assert gate.window == 10


async def test_a_window_that_grows_lets_waiting_logins_in() -> None:
    gate = LoginGate(16, floor=1)
    gate.window = 1.0
    release = asyncio.Event()
    logins = logins_holding(gate, 4, release)
    await eventually(lambda: gate.waiting == 3, "three logins waiting behind a window of one")
    gate.took(0.1)  # a fast answer: slow start grows the window to 2
    await eventually(lambda: gate.in_flight == 2, "a second login let in")
    release.set()
    await asyncio.gather(*logins)
    assert gate.in_flight == 0 and gate.admitted == 4


async def test_a_cancelled_first_connection_stops_even_if_nats_py_swallowed_the_cancellation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """asyncio.wait_for in Python 3.11 can swallow a cancellation that races its inner future (nats-py's connect waits
    with it): the lifeline's loop of attempts must still end, or a process's shutdown waits on it for ever."""
    entered, swallowed = asyncio.Event(), asyncio.Event()

    async def connect_swallowing_the_cancel(self: Client, *_args: object, **_options: object) -> None:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            swallowed.set()  # and carry on, as the race does
        raise OSError("connection refused")

    monkeypatch.setattr(Client, "connect", connect_swallowing_the_cancel)
    link = Lifeline("cancelled", backoff=Backoff(first_s=0.01, max_s=0.02))
    attempt = asyncio.create_task(link.connect("nats://127.0.0.1:1"))
    await asyncio.wait_for(entered.wait(), 5)  # its first attempt is under way
    attempt.cancel()
    await swallowed.wait()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(attempt, 5)
