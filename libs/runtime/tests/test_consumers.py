"""FLEET_EVENTS consumers: commit then ack, once per event id, retry what is temporary, dead-letter the rest."""

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import msgspec
from nats.aio.client import Client
from nats.js import JetStreamContext

from flotilla_contracts import catalogue
from flotilla_contracts.envelope import H_MSG_ID, H_SCHEMA, schema_id
from flotilla_contracts.streams import FLEET_EVENTS
from flotilla_contracts.subjects import Service
from flotilla_contracts.v1.deadletter import DeadLettered
from flotilla_contracts.v1.registration_events import NodeRemoved
from flotilla_runtime.bus import ensure_streams
from flotilla_runtime.consumers import EventConsumer, EventMeta
from flotilla_runtime.errors import TemporaryError
from flotilla_runtime.migrations import Migration
from flotilla_runtime.outbox import OutboxRelay
from flotilla_runtime.store import Store, Tx
from flotilla_testkit import eventually

MIGRATIONS = [Migration("t", 1, "seen", "CREATE TABLE removed (node_id TEXT NOT NULL, seq INTEGER NOT NULL)")]


def removed(node: str) -> NodeRemoved:
    return NodeRemoved(cluster_id="c1", node_id=node, node_name=node, occurred_at=datetime.now(UTC))


async def publish(js: JetStreamContext, event: NodeRemoved, msg_id: str, raw: bytes | None = None) -> None:
    subject = catalogue.subject_for(NodeRemoved, cluster_id=event.cluster_id, node_id=event.node_id)
    headers = {H_SCHEMA: schema_id(NodeRemoved), H_MSG_ID: msg_id}
    await js.publish(subject, raw if raw is not None else msgspec.json.encode(event), headers=headers)


class Recorder:
    def __init__(self) -> None:
        self.fail_times: dict[str, int] = {}

    async def __call__(self, event: NodeRemoved, tx: Tx, meta: EventMeta) -> None:
        left = self.fail_times.get(event.node_id, 0)
        if left:
            self.fail_times[event.node_id] = left - 1
            raise TemporaryError("database busy", delay_s=0.05)
        await tx.execute("INSERT INTO removed VALUES (?, ?)", (event.node_id, meta.stream_seq))


async def consumer_for(store: Store, recorder: Recorder, nodes: str = "node") -> EventConsumer:
    return EventConsumer(
        service=Service.HEARTBEAT,
        instance_id="i1",
        durable="heartbeat-test",
        filter_subjects=["fleet.v1.evt.node.>"],
        handlers={NodeRemoved: recorder},
        store=store,
        batch=16,
    )


async def run_until_caught_up(consumer: EventConsumer, js: JetStreamContext) -> None:
    """Run the consumer until every message is settled: none pending, none awaiting an ack (retries come back as
    pending or ack-pending, so a nak with a delay keeps the wait going until the retry passes)."""
    task = asyncio.create_task(consumer.run(js))
    await asyncio.wait_for(consumer.caught_up.wait(), 10)

    async def settled() -> bool:
        info = await js.consumer_info(FLEET_EVENTS.name, consumer.durable)
        return info.num_pending == 0 and info.num_ack_pending == 0

    await eventually(settled, f"consumer {consumer.durable}: every message acked or terminated", timeout_s=10)
    consumer.stop()
    await asyncio.wait_for(task, 5)


async def handled(store: Store) -> list[str]:
    return [row["node_id"] for row in await store.fetchall("SELECT node_id FROM removed ORDER BY seq")]


async def test_each_event_is_handled_once_even_when_published_twice(nc: Client, tmp_path: Path) -> None:
    js = nc.jetstream()
    await ensure_streams(js)
    store = await Store.open(tmp_path / "s.db", MIGRATIONS)
    for n in range(5):
        await publish(js, removed(f"n{n}"), f"id-{n}")
    # The same event id again after the duplicate window would be stored twice; the consumer still skips it.
    await js.publish(
        "fleet.v1.evt.node.c1.n0.removed",
        msgspec.json.encode(removed("n0")),
        headers={H_SCHEMA: schema_id(NodeRemoved), H_MSG_ID: "id-0", "Nats-Expected-Last-Sequence": "5"},
    )
    consumer = await consumer_for(store, Recorder())
    await run_until_caught_up(consumer, js)
    assert await handled(store) == ["n0", "n1", "n2", "n3", "n4"]
    assert consumer.stats.handled == 5
    await store.close()


async def test_a_restarted_consumer_does_not_handle_acked_events_again(nc: Client, tmp_path: Path) -> None:
    js = nc.jetstream()
    await ensure_streams(js)
    store = await Store.open(tmp_path / "s.db", MIGRATIONS)
    await publish(js, removed("a"), "id-a")
    await run_until_caught_up(await consumer_for(store, Recorder()), js)
    await publish(js, removed("b"), "id-b")
    again = await consumer_for(store, Recorder())
    await run_until_caught_up(again, js)
    assert await handled(store) == ["a", "b"]
    assert again.stats.handled == 1
    await store.close()


async def test_temporary_errors_are_retried_until_they_pass(nc: Client, tmp_path: Path) -> None:
    js = nc.jetstream()
    await ensure_streams(js)
    store = await Store.open(tmp_path / "s.db", MIGRATIONS)
    recorder = Recorder()
    recorder.fail_times = {"flaky": 2}
    await publish(js, removed("flaky"), "id-flaky")
    await publish(js, removed("steady"), "id-steady")
    consumer = await consumer_for(store, recorder)
    await run_until_caught_up(consumer, js)
    assert sorted(await handled(store)) == ["flaky", "steady"]
    assert consumer.stats.retried == 2
    await store.close()


async def test_undecodable_events_are_dead_lettered_and_do_not_block_the_rest(nc: Client, tmp_path: Path) -> None:
    js = nc.jetstream()
    await ensure_streams(js)
    store = await Store.open(tmp_path / "s.db", MIGRATIONS)
    await publish(js, removed("bad"), "id-bad", raw=b'{"cluster_id": "c1", "node_id": 12}')
    await publish(js, removed("good"), "id-good")
    consumer = await consumer_for(store, Recorder())
    await run_until_caught_up(consumer, js)
    assert await handled(store) == ["good"]
    assert consumer.stats.dead_lettered == 1
    await OutboxRelay(store, js).flush()
    msg = await js.get_last_msg(FLEET_EVENTS.name, "fleet.v1.evt.dead-letter.heartbeat.recorded")
    letter = msgspec.json.decode(msg.data, type=DeadLettered)
    assert letter.reason == "invalid_field"
    assert letter.original_msg_id == "id-bad"
    assert letter.consumer == "heartbeat-test"
    await store.close()


async def test_other_schemas_are_ignored_and_unreadable_versions_dead_lettered(nc: Client, tmp_path: Path) -> None:
    js = nc.jetstream()
    await ensure_streams(js)
    store = await Store.open(tmp_path / "s.db", MIGRATIONS)
    await js.publish("fleet.v1.evt.node.c1.x.added", b"{}", headers={H_SCHEMA: "registration.NodeAdded/v1"})
    await js.publish("fleet.v1.evt.node.c1.y.removed", b"{}", headers={H_SCHEMA: "registration.NodeRemoved/v3"})
    consumer = await consumer_for(store, Recorder())
    await run_until_caught_up(consumer, js)
    assert (consumer.stats.ignored, consumer.stats.dead_lettered) == (1, 1)
    await store.close()


async def test_events_nested_100k_deep_are_dead_lettered_as_malformed(nc: Client, tmp_path: Path) -> None:
    js = nc.jetstream()
    await ensure_streams(js)
    store = await Store.open(tmp_path / "s.db", MIGRATIONS)
    deep = b'{"cluster_id": "c1", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    await publish(js, removed("deep"), "id-deep", raw=deep)
    await publish(js, removed("good"), "id-good")
    consumer = await consumer_for(store, Recorder())
    await run_until_caught_up(consumer, js)
    assert await handled(store) == ["good"]
    assert (consumer.stats.dead_lettered, consumer.stats.retried) == (1, 0)
    await OutboxRelay(store, js).flush()
    msg = await js.get_last_msg(FLEET_EVENTS.name, "fleet.v1.evt.dead-letter.heartbeat.recorded")
    letter = msgspec.json.decode(msg.data, type=DeadLettered)
    assert (letter.reason, letter.original_msg_id) == ("malformed", "id-deep")
    assert "nested deeper than 128" in letter.message
    await store.close()
