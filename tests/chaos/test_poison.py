"""A message that always fails is dead-lettered with its reason after its retries, and the messages behind it flow.

Real nats-server, the runtime's EventConsumer and OutboxRelay. In the same run, the same number of good
events is consumed twice by two durables on two subject sets: once alone, once behind a poison message.
Every good event must arrive in both; the throughput ratio is printed, not asserted (noisy machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from flotilla_contracts import catalogue
from flotilla_contracts.envelope import H_MSG_ID, H_SCHEMA, schema_id
from flotilla_contracts.errors import ErrorCode
from flotilla_contracts.streams import FLEET_EVENTS
from flotilla_contracts.subjects import Service
from flotilla_contracts.v1.deadletter import DeadLettered
from flotilla_contracts.v1.registration_events import NodeRemoved
from flotilla_runtime import logins
from flotilla_runtime.bus import ensure_streams
from flotilla_runtime.consumers import EventConsumer, EventMeta
from flotilla_runtime.errors import TemporaryError
from flotilla_runtime.migrations import Migration
from flotilla_runtime.outbox import OutboxRelay
from flotilla_runtime.store import Store, Tx
from flotilla_testkit import ConditionNotMet, eventually

pytestmark = pytest.mark.integration
GOOD = 1000
MAX_DELIVER = 4
MIGRATIONS = [Migration("t", 1, "seen", "CREATE TABLE handled (cluster_id TEXT, node_id TEXT)")]
DEAD_LETTERS = catalogue.subject_for(DeadLettered, service=Service.HEARTBEAT.value)


class Handler:
    """Records good events; the node named `poison` fails every time, the way `mode` says."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.poison_attempts = 0

    async def __call__(self, event: NodeRemoved, tx: Tx, meta: EventMeta) -> None:
        if event.node_id == "poison":
            self.poison_attempts += 1
            if self.mode == "temporary":
                raise TemporaryError("the database stays busy for this one", delay_s=0.05)
            raise RuntimeError("handler bug: this event always fails")
        await tx.execute("INSERT INTO handled VALUES (?, ?)", (event.cluster_id, event.node_id))


async def publish(js: JetStreamContext, cluster: str, node: str, raw: bytes | None = None) -> None:
    event = NodeRemoved(cluster_id=cluster, node_id=node, node_name=node, occurred_at=datetime.now(UTC))
    subject = catalogue.subject_for(NodeRemoved, cluster_id=cluster, node_id=node)
    headers = {H_SCHEMA: schema_id(NodeRemoved), H_MSG_ID: f"{cluster}-{node}"}
    await js.publish(subject, raw if raw is not None else msgspec.json.encode(event), headers=headers)


async def count(store: Store, cluster: str) -> int:
    row = await store.fetchone("SELECT count(*) AS n FROM handled WHERE cluster_id = ?", (cluster,))
    assert row is not None
    return int(row["n"])


async def consume(
    js: JetStreamContext, store: Store, handler: Handler, cluster: str, consumers: list[EventConsumer]
) -> float:
    """Run a durable on `cluster`'s events until every good one is handled; (consumer, seconds taken)."""
    consumer = EventConsumer(
        service=Service.HEARTBEAT,
        instance_id="chaos",
        durable=f"heartbeat-poison-{cluster}",
        filter_subjects=[f"fleet.v1.evt.node.{cluster}.>"],
        handlers={NodeRemoved: handler},
        store=store,
        batch=128,
        max_deliver=MAX_DELIVER,
    )
    started = time.perf_counter()
    consumer.task = asyncio.create_task(consumer.run(js))  # type: ignore[attr-defined]
    consumers.append(consumer)
    await eventually(
        lambda: count(store, cluster), f"{cluster}: {GOOD} events handled", timeout_s=10, every_s=0.01,
        until=lambda n: n >= GOOD,
    )  # fmt: skip
    return time.perf_counter() - started


async def dead_letters(url: str) -> list[dict[str, Any]]:
    nc = await logins.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(FLEET_EVENTS.name, subjects_filter=DEAD_LETTERS)
        found = (info.state.subjects or {}).get(DEAD_LETTERS, 0)
        if not found:
            return []
        sub = await js.subscribe(DEAD_LETTERS, ordered_consumer=True, stream=FLEET_EVENTS.name)
        return [msgspec.json.decode((await sub.next_msg(5)).data) for _ in range(found)]
    finally:
        await nc.close()


async def _run(
    js: JetStreamContext, store: Store, handler: Handler, mode: str, consumers: list[EventConsumer], url: str
) -> list[dict[str, Any]]:
    for n in range(GOOD):
        await publish(js, "clean", f"n{n}")
    if mode == "undecodable":
        await publish(js, "poisoned", "poison", raw=b'{"cluster_id": "poisoned", "node_id": ')
    elif mode == "invalid-utf8":
        await publish(js, "poisoned", "poison", raw=b'{"cluster_id": "poisoned", "node_id": "\xe9"}')
    else:
        await publish(js, "poisoned", "poison")
    for n in range(GOOD):
        await publish(js, "poisoned", f"n{n}")
    clean_s = await consume(js, store, handler, "clean", consumers)
    poisoned_s = await consume(js, store, handler, "poisoned", consumers)
    print(
        f"\n[{mode}] {GOOD} good events alone in {clean_s:.2f}s ({GOOD / clean_s:.0f}/s), behind a poison message "
        f"in {poisoned_s:.2f}s ({GOOD / poisoned_s:.0f}/s); ratio poisoned/clean throughput "
        f"{clean_s / poisoned_s:.2f}; messages checked {2 * GOOD + 1}"
    )
    assert await count(store, "clean") == GOOD and await count(store, "poisoned") == GOOD
    found: list[dict[str, Any]] = []
    with contextlib.suppress(ConditionNotMet):  # none is a finding the caller asserts on
        found = await eventually(lambda: dead_letters(url), "a dead letter", timeout_s=5, every_s=0.2)
    if mode != "undecodable" and mode != "invalid-utf8":
        assert handler.poison_attempts >= MAX_DELIVER - 1
    return found


@pytest.mark.parametrize(
    "mode",
    [
        "bug",
        "undecodable",
        "temporary",  # regression: naks went on past max_deliver and the message was lost without a dead letter
        "invalid-utf8",  # regression: UnicodeDecodeError escaped handle() and stopped the consumer
    ],
)
async def test_a_poison_message_is_dead_lettered_and_the_rest_flow(
    nc: Client, nats_server: Any, tmp_path: Path, mode: str
) -> None:
    js = nc.jetstream()
    await ensure_streams(js)
    store = await Store.open(tmp_path / "s.db", MIGRATIONS)
    relay = OutboxRelay(store, js, poll_s=0.1)
    relay.start()
    consumers: list[EventConsumer] = []
    try:
        found = await _run(js, store, Handler(mode), mode, consumers, nats_server.url)
    finally:  # an open Store keeps a non-daemon thread: always close it, or the test run never exits
        for consumer in consumers:
            consumer.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer.task, 5)  # type: ignore[attr-defined]
        await relay.stop()
        await store.close()
    assert len(found) == 1, f"expected one DeadLettered for the poison message, got {found}"
    dead = found[0]
    assert dead["original_subject"].endswith(".poisoned.poison.removed")
    assert dead["original_msg_id"] == "poisoned-poison"
    assert dead["message"], "a dead letter names its reason"
    if mode in ("undecodable", "invalid-utf8"):
        assert dead["reason"] == ErrorCode.INVALID_FIELD
    else:
        assert dead["attempts"] >= MAX_DELIVER - 1, f"dead-lettered before its retries: {dead}"
    print(f"[{mode}] dead-lettered after {dead['attempts']} attempts: {dead['reason']}: {dead['message']}")
    assert [c.stats.dead_lettered for c in consumers] == [0, 1]
