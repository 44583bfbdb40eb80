"""Messages nats-py drops for a full subscription are counted and told to listeners, and logged once, not each."""

from __future__ import annotations

import asyncio
import logging

import pytest

from flotilla_client.natsserver import NatsServer
from flotilla_runtime import logins
from flotilla_runtime.bus import BusErrors
from flotilla_testkit import eventually


async def test_a_full_subscription_drops_are_counted_told_and_logged_once(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    errors = BusErrors()
    told: list[str] = []
    errors.drop_listeners.append(lambda error: told.append(error.subject))
    consumer = await logins.connect(nats_server.url, error_cb=errors.callback)
    producer = await logins.connect(nats_server.url)
    release = asyncio.Event()

    async def stuck(_msg: object) -> None:
        await release.wait()  # the first message holds the subscription: the next 10 wait, the rest are dropped

    sub = await consumer.subscribe("fleet.v1.hb.*.*", cb=stuck, pending_msgs_limit=10)
    await consumer.flush()
    sent = 0

    async def overflowing() -> tuple[int, int, int, int]:
        """Another 20 messages each time (a batch late to arrive still counts), then what the consumer saw."""
        nonlocal sent
        for n in range(sent, min(sent + 20, 100)):
            await producer.publish(f"fleet.v1.hb.c1.n{n}", b"{}")
        sent = min(sent + 20, 100)
        await producer.flush()
        return errors.dropped, consumer.stats["in_msgs"], sub.pending_msgs, sent

    with caplog.at_level(logging.WARNING, logger="flotilla_runtime.bus"):
        await eventually(overflowing, "the overflow dropped (dropped, in, pending, sent)", until=lambda s: s[0] >= 2)
    assert len(told) == errors.dropped and set(told) <= {f"fleet.v1.hb.c1.n{n}" for n in range(100)}
    assert errors.count == 0, "a drop is not a connection error"
    drop_lines = [r for r in caplog.records if "dropped messages" in r.getMessage()]
    assert len(drop_lines) == 1, [r.getMessage() for r in caplog.records]
    release.set()
    await producer.close()
    await consumer.close()
