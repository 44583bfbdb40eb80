"""The auth callout does not answer requests the server has stopped waiting for (their `exp`, the server's
authorization timeout, passed): on a starved machine those answers would be thrown away, and spending a database
read and two signatures on each made the requests behind them late too."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from callout_support import Request

from flotilla_registration import natsjwt
from flotilla_registration.callout import AuthCallout, Verdict, request_expiry, too_late
from flotilla_registration.natskeys import new_account_seed

SENT = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
TIMEOUT_S = 5  # `flotilla up`'s authorization timeout


def request(expiry: int) -> bytes:
    """An authorization request as the server sends it, as far as the callout reads it before verifying it."""
    payload = base64.urlsafe_b64encode(json.dumps({"exp": expiry, "iat": expiry - TIMEOUT_S}).encode()).rstrip(b"=")
    return b"eyJ0eXAiOiJKV1QifQ." + payload + b".c2ln"


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class Store:
    """Registration's store, standing in: counts reads, and lets time pass while one runs."""

    def __init__(self, clock: Clock, takes: timedelta = timedelta(0)) -> None:
        self.clock, self.takes, self.reads = clock, takes, 0

    async def run(self, work: Any) -> Verdict:
        self.reads += 1
        self.clock.now += self.takes
        return Verdict("join.x", None, "refused: a test")


@pytest.fixture(autouse=True)
def any_request_is_join_x(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the expiry check every request decodes to a join user's and the answer is the verdict's reason (the
    subject here is whether an answer is given, not what it says)."""
    decoded = SimpleNamespace(
        connect_opts=SimpleNamespace(nkey="", user="join.x", password="", auth_token=""),
        client_info=SimpleNamespace(nonce="", host="127.0.0.1"),
        user_nkey="U",
        server_id=SimpleNamespace(id="S"),
    )
    monkeypatch.setattr(natsjwt, "decode_request", lambda data: decoded)
    monkeypatch.setattr(AuthCallout, "answer", lambda self, req, verdict: verdict.reason)


def deadline() -> int:
    return int((SENT + timedelta(seconds=TIMEOUT_S)).timestamp())


async def answer_at(now: datetime, takes: timedelta = timedelta(0)) -> tuple[Request, Store, AuthCallout]:
    clock = Clock(now)
    store = Store(clock, takes)
    auth = AuthCallout(store, b"k" * 32, new_account_seed(), clock=clock)  # type: ignore[arg-type]
    msg = Request(request(deadline()))
    await auth.on_request(msg)  # type: ignore[arg-type]
    await auth.drain()
    return msg, store, auth


def test_a_request_is_late_only_a_second_past_its_expiry_which_is_rounded_down() -> None:
    assert not too_late(100, 99.9)
    assert not too_late(100, 100.5)  # the server's deadline may be 100.99: it may still be waiting
    assert too_late(100, 101.0)
    assert not too_late(0, 1e12), "a request whose expiry could not be read is answered"


def test_the_expiry_is_read_from_the_request_and_anything_unreadable_is_no_deadline() -> None:
    assert request_expiry(request(1_767_268_805)) == 1_767_268_805
    for junk in (b"", b"{}", b"a.b", b"a.!!!.c", b"a." + base64.urlsafe_b64encode(b"[1]") + b".c"):
        assert request_expiry(junk) == 0, junk


async def test_a_request_within_its_deadline_is_answered() -> None:
    msg, store, auth = await answer_at(SENT + timedelta(seconds=4))
    assert msg.answers == [b"refused: a test"]
    assert (store.reads, auth.stats.late) == (1, 0)


async def test_a_request_the_server_stopped_waiting_for_is_dropped_before_the_database_is_asked() -> None:
    msg, store, auth = await answer_at(SENT + timedelta(seconds=TIMEOUT_S + 1))
    assert msg.answers == []
    assert (store.reads, auth.stats.late) == (0, 1)


async def test_an_answer_whose_read_outlasted_the_deadline_is_not_signed_and_sent() -> None:
    msg, store, auth = await answer_at(SENT + timedelta(seconds=3), takes=timedelta(seconds=3))
    assert msg.answers == []
    assert (store.reads, auth.stats.late) == (1, 1)
