"""The auth callout answers connections side by side: nats-py awaits a subscription's callbacks one by one, and
nats-server holds every connecting client until its answer, so an answer in line made a fleet connecting at once
wait seconds per CONNECT."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from callout_support import Request

from flotilla_registration import callout as callout_module
from flotilla_registration.callout import AuthCallout, Verdict
from flotilla_registration.natskeys import new_account_seed


class BothAtOnce:
    """A store whose reads finish only once `needed` of them are in flight together."""

    def __init__(self, needed: int) -> None:
        self.needed, self.in_flight = needed, 0
        self.together = asyncio.Event()

    async def run(self, work: Any) -> Verdict:
        self.in_flight += 1
        if self.in_flight >= self.needed:
            self.together.set()
        await self.together.wait()
        return Verdict("join.x", None, "refused: a test")


@pytest.fixture(autouse=True)
def any_request_is_join_x(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every request decodes to a join user's, and the answer is the verdict's reason (no JWTs: the subject here
    is when answers are given, not what they say)."""
    request = SimpleNamespace(
        connect_opts=SimpleNamespace(nkey="", user="join.x", password="", auth_token=""),
        client_info=SimpleNamespace(nonce="", host="127.0.0.1"),
        user_nkey="U",
        server_id=SimpleNamespace(id="S"),
    )
    monkeypatch.setattr(callout_module.natsjwt, "decode_request", lambda data: request)
    monkeypatch.setattr(AuthCallout, "answer", lambda self, req, verdict: verdict.reason)


async def test_connections_are_authorized_side_by_side() -> None:
    store = BothAtOnce(needed=3)
    auth = AuthCallout(store, b"k" * 32, new_account_seed())  # type: ignore[arg-type]
    messages = [Request(b"{}") for _ in range(3)]
    for msg in messages:  # in line, the first would wait forever for the other two
        await asyncio.wait_for(auth.on_request(msg), timeout=10)  # type: ignore[arg-type]
    await asyncio.wait_for(auth.drain(), timeout=10)
    assert [m.answers for m in messages] == [[b"refused: a test"]] * 3


async def test_past_the_bound_the_subscription_waits() -> None:
    store = BothAtOnce(needed=3)
    auth = AuthCallout(store, b"k" * 32, new_account_seed(), max_in_flight=2)  # type: ignore[arg-type]
    first, second, third = (Request(b"{}") for _ in range(3))
    await auth.on_request(first)  # type: ignore[arg-type]
    await auth.on_request(second)  # type: ignore[arg-type]
    waiting = asyncio.create_task(auth.on_request(third))  # type: ignore[arg-type]
    for _ in range(20):  # let every ready task run: the third stays waiting for a slot (no clock involved)
        await asyncio.sleep(0)  # sleep: 0 s, a yield to the ready tasks (no clock)
    assert not waiting.done() and store.in_flight == 2
    store.together.set()  # the two in flight finish: the third is taken and answered
    await asyncio.wait_for(waiting, timeout=10)
    await asyncio.wait_for(auth.drain(), timeout=10)
    assert third.answers == [b"refused: a test"]
