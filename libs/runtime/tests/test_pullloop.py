"""The one pull loop on a real nats-server: ack, retry after a delay, poison messages dead-lettered after max
deliveries while the messages behind them go on, a savepoint per message in batched mode, and a server restart."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import nats
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig

from flotilla_client.natsserver import NatsServer
from flotilla_contracts.errors import ErrorCode
from flotilla_runtime import logins
from flotilla_runtime.errors import PermanentError, TemporaryError
from flotilla_runtime.migrations import Migration
from flotilla_runtime.pullloop import (
    ACK,
    DeadLetters,
    Outcome,
    PullLoop,
    Verdict,
    backoff,
    final,
    in_one_transaction,
    one_at_a_time,
    outcome_of,
)
from flotilla_runtime.store import Store, SyncTx
from flotilla_testkit import eventually

log = logging.getLogger("test-pullloop")
MIGRATIONS = [Migration("t", 1, "rows", "CREATE TABLE rows (body TEXT NOT NULL)")]
STREAM = "PULLTEST"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(tmp_path / "s.db", MIGRATIONS)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def js(nc: Client) -> JetStreamContext:
    context = nc.jetstream()
    await context.add_stream(StreamConfig(name=STREAM, subjects=["pulltest.>"]))
    return context


def config(durable: str = "t") -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=durable,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=30,
        max_deliver=-1,
    )


def loop_of(store: Store, process: object, **options: object) -> PullLoop:
    return PullLoop(
        stream=STREAM,
        config=config(),
        process=process,  # type: ignore[arg-type]
        dead_letters=DeadLetters(store, "heartbeat", "i1"),
        log=log,
        fetch_timeout_s=0.2,
        **options,  # type: ignore[arg-type]
    )


async def publish(js: JetStreamContext, *bodies: str) -> None:
    for body in bodies:
        await js.publish(f"pulltest.{body}", body.encode())


async def rows(store: Store) -> list[str]:
    return [row["body"] for row in await store.fetchall("SELECT body FROM rows ORDER BY rowid")]


async def dead_letters(store: Store) -> list[dict[str, object]]:
    return [
        msgspec.json.decode(row["payload"])
        for row in await store.pending_outbox(100)
        if ".dead-letter." in row["subject"]
    ]


async def consumer_settled(js: JetStreamContext) -> bool:
    try:
        info = await js.consumer_info(STREAM, "t")
    except nats.js.errors.NotFoundError:  # the loop has not created it yet
        return False
    return info.num_pending == 0 and info.num_ack_pending == 0


def test_outcomes_of_errors_and_the_max_deliveries_rule() -> None:
    assert outcome_of(PermanentError(ErrorCode.INVALID_FIELD, "no"), 1) == Outcome.dead_letter(
        ErrorCode.INVALID_FIELD, "no"
    )
    temporary = outcome_of(TemporaryError("busy", delay_s=0.5), 3)
    assert temporary.verdict is Verdict.RETRY and temporary.delay_s == 2.0
    bug = outcome_of(KeyError("x"), 1)
    assert bug.verdict is Verdict.RETRY and bug.code is ErrorCode.INTERNAL and "KeyError" in bug.reason
    assert backoff(1.0, 20) == 30.0
    assert final(bug, 4, 5) == bug
    given_up = final(bug, 5, 5)
    assert given_up.verdict is Verdict.DEAD_LETTER and given_up.code is ErrorCode.INTERNAL
    assert "after 5 deliveries" in given_up.reason and "KeyError" in given_up.reason
    assert final(bug, 500, None) == bug, "no limit: retried for ever"
    waiting = Outcome.wait(5.0, "node unreachable")
    assert final(waiting, 500, 5) == waiting, "a wait is never given up"


async def test_handled_messages_are_acked_once(js: JetStreamContext, store: Store) -> None:
    seen: list[str] = []

    async def handle(msg: Msg) -> Outcome:
        seen.append(msg.data.decode())
        return ACK

    loop = loop_of(store, one_at_a_time(handle, log))
    task = asyncio.create_task(loop.run(js))
    try:
        await publish(js, "a", "b", "c")
        await eventually(lambda: consumer_settled(js), "every message acked")
        assert seen == ["a", "b", "c"] and loop.stats.acked == 3
    finally:
        loop.stop()
        await asyncio.wait_for(task, 10)


async def test_a_retry_comes_back_after_its_delay(js: JetStreamContext, store: Store) -> None:
    deliveries: list[tuple[str, float]] = []

    async def handle(msg: Msg) -> Outcome:
        deliveries.append((msg.data.decode(), time.monotonic()))
        if len(deliveries) == 1:
            return Outcome.retry(0.5, "not yet")
        return ACK

    loop = loop_of(store, one_at_a_time(handle, log))
    task = asyncio.create_task(loop.run(js))
    try:
        await publish(js, "a")
        await eventually(lambda: consumer_settled(js), "the retried message acked")
        assert [body for body, _ in deliveries] == ["a", "a"]
        assert deliveries[1][1] - deliveries[0][1] >= 0.45, "redelivered before its delay"
        assert loop.stats.retried == 1 and loop.stats.acked == 1 and await dead_letters(store) == []
    finally:
        loop.stop()
        await asyncio.wait_for(task, 10)


async def test_a_poison_message_is_dead_lettered_after_max_deliveries_and_the_rest_go_on(
    js: JetStreamContext, store: Store
) -> None:
    attempts: dict[str, int] = {}

    def handle(tx: SyncTx, msg: Msg) -> Outcome:
        body = msg.data.decode()
        attempts[body] = attempts.get(body, 0) + 1
        if body == "poison":
            raise ValueError("always fails")
        tx.execute("INSERT INTO rows VALUES (?)", (body,))
        return ACK

    loop = loop_of(store, in_one_transaction(store.run, handle, log), max_deliveries=3, batch=1)
    task = asyncio.create_task(loop.run(js))
    try:
        await publish(js, "a", "poison", "b", "c")
        await eventually(lambda: consumer_settled(js), "the poison message settled")
        assert await rows(store) == ["a", "b", "c"]
        assert attempts["poison"] == 3
        [dead] = await dead_letters(store)
        assert dead["reason"] == "internal" and dead["attempts"] == 3
        assert "after 3 deliveries" in str(dead["message"]) and "ValueError: always fails" in str(dead["message"])
        assert dead["original_subject"] == "pulltest.poison" and dead["consumer"] == "t"
        assert loop.stats.dead_lettered == 1 and loop.stats.retried == 2
    finally:
        loop.stop()
        await asyncio.wait_for(task, 10)


async def test_a_failure_in_one_savepoint_leaves_the_others_writes_committed(
    js: JetStreamContext, store: Store
) -> None:
    fetched: list[list[str]] = []
    rolled_back: list[str] = []

    def handle(tx: SyncTx, msg: Msg) -> Outcome:
        body = msg.data.decode()
        tx.execute("INSERT INTO rows VALUES (?)", (body,))
        if body == "bad":
            raise PermanentError(ErrorCode.INVALID_FIELD, "bad body")  # after its own write
        return ACK

    in_savepoints = in_one_transaction(store.run, handle, log, rolled_back=lambda tx: rolled_back.append("x"))

    async def process(messages: list[Msg]) -> list[Outcome]:
        fetched.append([m.data.decode() for m in messages])
        return await in_savepoints(messages)

    await publish(js, "a", "bad", "b")
    loop = loop_of(store, process, batch=16)
    task = asyncio.create_task(loop.run(js))
    try:
        await eventually(lambda: consumer_settled(js), "the batch settled")
        assert fetched == [["a", "bad", "b"]], "the three messages were meant to come in one fetch"
        assert await rows(store) == ["a", "b"], "only the failing message's write is rolled back"
        assert rolled_back == ["x"]
        [dead] = await dead_letters(store)
        assert dead["reason"] == "invalid_field" and dead["message"] == "bad body" and dead["attempts"] == 1
    finally:
        loop.stop()
        await asyncio.wait_for(task, 10)


async def test_the_loop_survives_a_nats_server_restart(nats_server: NatsServer, store: Store) -> None:
    client = await logins.connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    try:
        js = client.jetstream()
        await js.add_stream(StreamConfig(name=STREAM, subjects=["pulltest.>"]))
        seen: list[str] = []

        async def handle(msg: Msg) -> Outcome:
            seen.append(msg.data.decode())
            return ACK

        loop = loop_of(store, one_at_a_time(handle, log), pause_s=0.1)
        task = asyncio.create_task(loop.run(js))
        await publish(js, "before")
        await eventually(lambda: seen == ["before"], "the first message")
        nats_server.stop()
        await eventually(lambda: not client.is_connected, "the client to notice the restart")
        nats_server.start()

        async def published_after() -> bool:
            try:
                await publish(js, "after")
                return True
            except Exception:  # JetStream of the restarted server still loading: publish again
                return False

        await eventually(published_after, "JetStream back after the restart")
        await eventually(lambda: "after" in seen, "the message published after the restart")
        assert not task.done(), "the loop ended on the restart"
        loop.stop()
        await asyncio.wait_for(task, 10)
    finally:
        await client.close()
