"""The relay publishes committed events to JetStream exactly once per event id, in commit order."""

import asyncio
from pathlib import Path
from typing import Any

import msgspec
import nats.js.errors
import pytest
from nats.aio.client import Client

from flotilla_contracts.envelope import H_MSG_ID, H_SCHEMA, Message
from flotilla_contracts.streams import FLEET_EVENTS
from flotilla_runtime.bus import ensure_streams
from flotilla_runtime.outbox import OutboxRelay
from flotilla_runtime.store import Store
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
        if n in self.refuse:
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
