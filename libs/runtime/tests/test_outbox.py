"""The relay publishes committed events to JetStream exactly once per event id, in commit order."""

import asyncio
from pathlib import Path
from typing import Any

import msgspec
import nats
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.js.api import StreamConfig

from flotilla_client.natsserver import NatsServer
from flotilla_contracts.envelope import H_MSG_ID, H_SCHEMA, Message
from flotilla_contracts.streams import FLEET_EVENTS
from flotilla_runtime import logins
from flotilla_runtime.bus import ensure_streams
from flotilla_runtime.errors import TemporaryError
from flotilla_runtime.outbox import OutboxRelay
from flotilla_runtime.store import Row, Store, SyncTx
from flotilla_testkit import eventually


class Happened(Message, frozen=True, kw_only=True):
    SCHEMA = "test.Happened"
    n: int


async def stream_messages(nc: Client) -> list[tuple[str, dict[str, str], int]]:
    js = nc.jetstream()
    info = await js.stream_info(FLEET_EVENTS.name)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(FLEET_EVENTS.name, seq)
        out.append((msg.subject, dict(msg.headers or {}), msgspec.json.decode(msg.data)["n"]))
    return out


async def test_events_reach_the_stream_in_commit_order(nc: Client, tmp_path: Path) -> None:
    js = nc.jetstream()
    await ensure_streams(js)
    store = await Store.open(tmp_path / "s.db")
    relay = OutboxRelay(store, js, batch=7)  # several batches
    relay.start()
    for n in range(20):
        async with store.transaction() as tx:
            await tx.emit(f"fleet.v1.evt.cluster.c{n}.approved", Happened(n=n))

    async def drained() -> bool:
        return await store.outbox_size() == 0

    await eventually(drained, "the relay to publish every outbox row", timeout_s=10)
    await relay.stop()
    messages = await stream_messages(nc)
    assert [n for _, _, n in messages] == list(range(20))
    assert all(headers[H_SCHEMA] == "test.Happened/v1" and headers[H_MSG_ID] for _, headers, _ in messages)
    await store.close()


async def test_republish_after_a_crash_is_deduplicated(nc: Client, tmp_path: Path) -> None:
    """A crash between JetStream's ack and the outbox delete re-sends the event; the stream keeps one copy."""
    js = nc.jetstream()
    await ensure_streams(js)
    store = await Store.open(tmp_path / "s.db")
    async with store.transaction() as tx:
        await tx.emit("fleet.v1.evt.cluster.c1.approved", Happened(n=1))
    row = (await store.pending_outbox(1))[0]
    # The first relay published but "crashed" before deleting the row.
    await js.publish(row["subject"], row["payload"], headers=msgspec.json.decode(row["headers"]))
    relay = OutboxRelay(store, js)
    await relay.flush()
    assert await store.outbox_size() == 0
    assert len(await stream_messages(nc)) == 1
    await store.close()


async def test_stream_provisioning_is_idempotent(nc: Client) -> None:
    js = nc.jetstream()
    await ensure_streams(js)
    await ensure_streams(js)
    info = await js.stream_info(FLEET_EVENTS.name)
    assert info.config.subjects == list(FLEET_EVENTS.subjects)
    assert info.config.duplicate_window == FLEET_EVENTS.duplicate_window_s


async def test_command_subjects_are_never_captured_by_a_stream(nc: Client) -> None:
    """DESIGN pitfall: a stream capturing fleet.v1.cmd.> would answer requests with a PubAck."""
    js = nc.jetstream()
    await ensure_streams(js)
    for name in await js.streams_info():
        assert not any(subject.startswith("fleet.v1.cmd") for subject in name.config.subjects or [])


async def test_agent_stream_allows_a_consumer_per_node_beyond_the_server_default(nc: Client) -> None:
    """nats-server caps a stream without max_consumers at 1,000; FLEET_AGENT has one consumer per node."""
    from flotilla_contracts.streams import FLEET_AGENT

    js = nc.jetstream()
    await ensure_streams(js)
    assert (await js.stream_info(FLEET_AGENT.name)).config.max_consumers == 1_000_000
    config = (await js.stream_info(FLEET_AGENT.name)).config
    config.max_consumers = 1000  # as an older Flotilla left it
    await js.update_stream(config)
    await ensure_streams(js)
    assert (await js.stream_info(FLEET_AGENT.name)).config.max_consumers == 1_000_000


class FlakyJetStream:
    """A publisher whose acks fail for the events listed in `refuse` (by payload `n`), the rest succeed."""

    def __init__(self) -> None:
        self.refuse: set[int] = set()
        self.silent: set[int] = set()  # never answered
        self.sent: list[int] = []

    async def publish_async(
        self,
        subject: str,
        payload: bytes = b"",
        wait_stall: float | None = None,
        stream: str | None = None,
        headers: dict[str, Any] | None = None,
        msg_ttl: float | None = None,
    ) -> asyncio.Future[Any]:
        n = msgspec.json.decode(payload)["n"]
        self.sent.append(n)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if n in self.silent:
            pass
        elif n in self.refuse:
            future.set_exception(nats.js.errors.APIError(description="stream full"))
        else:
            asyncio.get_running_loop().call_soon(future.set_result, n)
        return future


async def test_nothing_after_a_failed_event_is_deleted_with_batches_in_flight(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s.db")
    for n in range(20):
        async with store.transaction() as tx:
            await tx.emit(f"fleet.v1.evt.cluster.c{n}.approved", Happened(n=n))
    js = FlakyJetStream()
    js.refuse = {6}
    relay = OutboxRelay(store, js, batch=4, window=3)  # events 4..7 and 8..11 are in flight when 6 fails
    with pytest.raises(nats.js.errors.APIError):
        await relay.flush()
    left = [msgspec.json.decode(row["payload"])["n"] for row in await store.pending_outbox(100)]
    assert left == list(range(6, 20)) and relay.published == 6
    js.refuse, js.sent = set(), []
    await relay.flush()
    assert js.sent == list(range(6, 20)), "the failed event and everything behind it are sent again, in order"
    assert await store.outbox_size() == 0 and relay.published == 20
    await store.close()


async def emit_numbered(store: Store, count: int, subject_of: dict[int, str] | None = None) -> None:
    """Events 0..count-1 on fleet.v1.evt.cluster.c<n>.approved, or on `subject_of[n]`, in one transaction."""

    def work(tx: SyncTx) -> None:
        for n in range(count):
            tx.emit((subject_of or {}).get(n, f"fleet.v1.evt.cluster.c{n}.approved"), Happened(n=n))

    await store.run(work)


async def left_in_outbox(store: Store) -> list[int]:
    return [msgspec.json.decode(row["payload"])["n"] for row in await store.pending_outbox(10_000)]


async def test_an_event_no_stream_takes_stops_deletion_there_and_is_published_again(nc: Client, tmp_path: Path) -> None:
    """Event 6 (mid-batch, two batches in flight) gets no ack but nats-server's "no responders": 0..5 are
    forgotten, 6 and everything behind it stay and go out again, in order, once a stream takes that subject."""
    js = nc.jetstream()
    await ensure_streams(js)
    store = await Store.open(tmp_path / "s.db")
    await emit_numbered(store, 12, {6: "outboxtest.unstreamed"})
    relay = OutboxRelay(store, js, batch=4, window=3)
    with pytest.raises(TemporaryError, match=r"outboxtest\.unstreamed.*published again"):
        await relay.flush()
    assert await left_in_outbox(store) == list(range(6, 12)) and relay.published == 6
    await js.add_stream(StreamConfig(name="OUTBOXTEST", subjects=["outboxtest.>"]))
    await relay.flush()
    assert await store.outbox_size() == 0 and relay.published == 12
    assert [n for _, _, n in await stream_messages(nc)] == [0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11], "each once"
    unstreamed = await js.get_last_msg("OUTBOXTEST", "outboxtest.unstreamed")
    assert msgspec.json.decode(unstreamed.data or b"{}")["n"] == 6
    await store.close()


async def test_an_event_jetstream_refuses_stops_deletion_there(nc: Client, tmp_path: Path) -> None:
    js = nc.jetstream()
    await ensure_streams(js)
    store = await Store.open(tmp_path / "s.db")

    def work(tx: SyncTx) -> None:
        for n in range(5):  # event 2 expects another stream: JetStream answers with an error, not an ack
            headers = {"Nats-Expected-Stream": "ELSEWHERE"} if n == 2 else None
            tx.emit(f"fleet.v1.evt.cluster.c{n}.approved", Happened(n=n), trace_headers=headers)

    await store.run(work)
    relay = OutboxRelay(store, js)
    with pytest.raises(TemporaryError, match="expected stream"):
        await relay.flush()
    assert await left_in_outbox(store) == [2, 3, 4] and relay.published == 2
    await store.close()


async def test_an_unanswered_event_times_out_and_is_published_again_with_everything_behind_it(
    tmp_path: Path,
) -> None:
    store = await Store.open(tmp_path / "s.db")
    await emit_numbered(store, 20)
    js = FlakyJetStream()
    js.silent = {6}
    relay = OutboxRelay(store, js, batch=4, window=3, ack_timeout_s=0.2)
    with pytest.raises(TimeoutError, match="did not acknowledge 1 of 4 events"):
        await relay.flush()
    assert await left_in_outbox(store) == list(range(6, 20)) and relay.published == 6
    js.silent, js.sent = set(), []
    await relay.flush()
    assert js.sent == list(range(6, 20)) and await store.outbox_size() == 0
    await store.close()


async def test_a_nats_server_restart_while_publishing_loses_and_doubles_nothing(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """The server stops with batches in flight (their acks lost) and one more sent into the reconnect buffer."""
    client = await logins.connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    try:
        js = client.jetstream()
        await ensure_streams(js)
        store = await Store.open(tmp_path / "s.db")
        await emit_numbered(store, 600)
        prepared: list[int] = []
        stopped = asyncio.Event()

        async def prepare(rows: list[Row]) -> None:
            prepared.append(len(rows))
            if len(prepared) == 3:
                nats_server.stop()
                stopped.set()

        relay = OutboxRelay(store, js, batch=50, window=3, prepare=prepare, ack_timeout_s=1.0, poll_s=0.1)
        relay.start()
        await asyncio.wait_for(stopped.wait(), 10)
        await eventually(lambda: not client.is_connected, "the client to notice the stop")
        nats_server.start()

        async def drained() -> bool:
            return await store.outbox_size() == 0

        await eventually(drained, "every event published after the restart", timeout_s=60)
        await relay.stop()
        numbers = [n for _, _, n in await stream_messages(client)]
        assert sorted(numbers) == list(range(600)), "every event in the stream exactly once"
        assert relay.failures >= 1 and relay.published >= 600
        await store.close()
    finally:
        await client.close()
