"""Outbox benchmark: how fast committed events reach JetStream, against raw nats-py pipelined publishing.

Run: `.venv/bin/pytest -m bench -s tests/bench/bench_outbox.py` (BENCH_OUTBOX_EVENTS, default 50,000). One
nats-server with JetStream (file storage, FLEET_EVENTS as provisioned), in one run:
- raw: nats-py `publish_async` of the same subjects, headers and payloads, one wait per window of 4,000;
- drain: the relay publishing an outbox that already holds every event (a backlog after a restart);
- live: events committed by `Store.run` in transactions of 1,000, one after the other (as the heartbeat tick loop
  writes a burst of first-seen nodes) while the relay runs: the rate from the first commit to the last event in
  the stream;
- the write rates of `Store.run` (one thread hop per transaction) and of `Store.transaction` (one per event).
It prints events/s and ratios to raw, with the load average; it asserts only that every event arrived once.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import nats
import pytest
from bench_support import report, scale
from nats.aio.client import Client

from flotilla_client.natsserver import NatsServer, free_port
from flotilla_contracts.catalogue import subject_for
from flotilla_contracts.envelope import H_MSG_ID, H_SCHEMA, H_SENT_AT, schema_id
from flotilla_contracts.streams import FLEET_EVENTS
from flotilla_contracts.v1.heartbeat import NodeHealth, NodeHealthChanged
from flotilla_runtime.bus import ensure_streams
from flotilla_runtime.outbox import OutboxRelay
from flotilla_runtime.store import Store, SyncTx
from flotilla_testkit import eventually

pytestmark = pytest.mark.bench

EVENTS = scale(int(os.environ.get("BENCH_OUTBOX_EVENTS", "50000")))
TX_EVENTS = 1000
WINDOW = 4000  # nats-py's default limit of publishes in flight


def event(n: int, prefix: str) -> tuple[str, NodeHealthChanged]:
    """A first-seen node, as the heartbeat service reports it."""
    cluster, node = f"{prefix}-c{n // 10:05d}", f"n{n % 10:04d}"
    now = datetime.now(UTC)
    change = NodeHealthChanged(
        cluster_id=cluster,
        node_id=node,
        node_name=node,
        to=NodeHealth.READY,
        reason="KubeletReady",
        last_heartbeat_at=now,
        kubelet_version="v1.30.4",
        occurred_at=now,
    )
    return subject_for(NodeHealthChanged, cluster_id=cluster, node_id=node), change


async def stream_count(nc: Client) -> int:
    return int((await nc.jetstream().stream_info(FLEET_EVENTS.name)).state.messages)


async def raw(nc: Client) -> float:
    """Events/s of plain pipelined JetStream publishing of the same messages (no store)."""
    js = nc.jetstream()
    encode = msgspec.json.encode
    messages = []
    for n in range(EVENTS):
        subject, change = event(n, "raw")
        headers = {H_SCHEMA: schema_id(NodeHealthChanged), H_MSG_ID: uuid.uuid4().hex, H_SENT_AT: "x"}
        messages.append((subject, encode(change), headers))
    before = await stream_count(nc)
    started = time.perf_counter()
    for index in range(0, EVENTS, WINDOW):
        futures = [await js.publish_async(s, p, headers=h) for s, p, h in messages[index : index + WINDOW]]
        await asyncio.gather(*futures)
    elapsed = time.perf_counter() - started
    assert await stream_count(nc) - before == EVENTS
    return EVENTS / elapsed


async def commit(store: Store, prefix: str, *, one_at_a_time: bool = False) -> float:
    """Commit EVENTS events in transactions of TX_EVENTS: all queued at once (the group commit takes them
    together) or `one_at_a_time` (as a tick loop writes a burst, one transaction per tick)."""

    def emit_batch(start: int) -> Callable[[SyncTx], None]:
        def work(tx: SyncTx) -> None:
            for n in range(start, min(start + TX_EVENTS, EVENTS)):
                tx.emit(*event(n, prefix))

        return work

    started = time.perf_counter()
    if one_at_a_time:
        for start in range(0, EVENTS, TX_EVENTS):
            await store.run(emit_batch(start))
    else:
        await asyncio.gather(*(store.run(emit_batch(start)) for start in range(0, EVENTS, TX_EVENTS)))
    return time.perf_counter() - started


async def per_event_writes(path: Path, count: int) -> float:
    """Events/s written through `Store.transaction`, one awaited `emit` (a database-thread hop) per event."""
    store = await Store.open(path)
    started = time.perf_counter()
    for start in range(0, count, TX_EVENTS):
        async with store.transaction() as tx:
            for n in range(start, min(start + TX_EVENTS, count)):
                await tx.emit(*event(n, "tx"))
    elapsed = time.perf_counter() - started
    await store.close()
    return count / elapsed


async def drain(nc: Client, path: Path) -> tuple[float, float]:
    """(events/s writing the outbox, events/s the relay empties a full outbox into the stream)."""
    store = await Store.open(path)
    written = await commit(store, "drain")
    before = await stream_count(nc)
    relay = OutboxRelay(store, nc.jetstream())
    started = time.perf_counter()
    await relay.flush()
    elapsed = time.perf_counter() - started
    assert await stream_count(nc) - before == EVENTS and await store.outbox_size() == 0
    await store.close()
    return EVENTS / written, EVENTS / elapsed


async def live(nc: Client, path: Path) -> float:
    """Events/s from the first commit to the last event in the stream, the relay running throughout."""
    store = await Store.open(path)
    relay = OutboxRelay(store, nc.jetstream())
    relay.start()
    before = await stream_count(nc)
    started = time.perf_counter()
    await commit(store, "live", one_at_a_time=True)

    async def all_in() -> bool:
        return await store.outbox_size() == 0 and await stream_count(nc) - before == EVENTS

    await eventually(all_in, "every event in the stream", timeout_s=600, every_s=0.02)
    elapsed = time.perf_counter() - started
    await relay.stop()
    await store.close()
    return EVENTS / elapsed


async def test_outbox_benchmark(tmp_path: Path) -> None:
    server = NatsServer(state_dir=tmp_path / "nats", port=free_port())
    server.start()
    try:
        nc = await nats.connect(server.url)
        await ensure_streams(nc.jetstream())
        load_before = os.getloadavg()
        raw_rate = await raw(nc)
        write_rate, drain_rate = await drain(nc, tmp_path / "drain.db")
        live_rate = await live(nc, tmp_path / "live.db")
        tx_rate = await per_event_writes(tmp_path / "tx.db", min(EVENTS, 10_000))
        load_after = os.getloadavg()
        await nc.close()
    finally:
        server.stop()
    report(
        f"outbox relay, {EVENTS:,} events (NodeHealthChanged, FLEET_EVENTS on file storage)",
        {
            "raw nats-py publish_async": f"{raw_rate:,.0f} events/s (baseline)",
            "outbox write (Store.run, 1,000/tx)": f"{write_rate:,.0f} events/s",
            "outbox write (Store.transaction, await per event)": f"{tx_rate:,.0f} events/s",
            "relay drain of a full outbox": f"{drain_rate:,.0f} events/s ({drain_rate / raw_rate:.2f}x raw)",
            "commit + relay, end to end": f"{live_rate:,.0f} events/s ({live_rate / raw_rate:.2f}x raw)",
            "load average (1/5/15 min) before": " / ".join(f"{x:.2f}" for x in load_before),
            "load average (1/5/15 min) after": " / ".join(f"{x:.2f}" for x in load_after),
        },
    )
