"""Outbox benchmark: what the relay costs per event and how fast committed events reach JetStream, against raw nats-py.

Run: `.venv/bin/pytest -m bench -s tests/bench/bench_outbox.py` (BENCH_OUTBOX_EVENTS, default 50,000). One
nats-server with JetStream (file storage, FLEET_EVENTS as provisioned), in one run, the same events each time:
- raw core: nats-py `nc.publish` with a reply subject (what a JetStream publish is on the wire) into one wildcard
  subscription counting the acks: the floor of any Python publisher here;
- raw JetStream: nats-py `js.publish_async` with pre-built headers, one wait per window of 4,000;
- drain: the relay publishing an outbox that already holds every event (a backlog after a restart);
- live: events committed by `Store.run` in transactions of 1,000, one after the other (as the heartbeat tick loop
  writes a burst of first-seen nodes) while the relay runs: the rate from the first commit to the last event in
  the stream;
- the write rates of `Store.run` (one thread hop per transaction) and of `Store.transaction` (one per event);
- SQLite alone: CPU an event of committing the rows, and of reading and forgetting them as the relay does.
For raw and drain it prints events/s and this process's CPU per event (/proc/self/stat: the publisher, the
SQLite thread included) and nats-server's, with ratios to raw JetStream, and the load average. It asserts only
that every event arrived once. BENCH_OUTBOX_PROFILE=FILE: py-spy (on PATH) records this process during the
drain into FILE (collapsed stacks).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import nats
import pytest
from bench_support import cpu_seconds, report, scale
from nats.aio.client import Client
from nats.aio.msg import Msg

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
PROFILE = os.environ.get("BENCH_OUTBOX_PROFILE", "")
Messages = list[tuple[str, bytes, dict[str, str]]]


class Cost:
    """Wall time and CPU (this process, nats-server) of one measured stretch, per event."""

    def __init__(self, server_pid: int) -> None:
        self._pid = server_pid
        self.rate = self.cpu_us = self.server_us = 0.0

    def __enter__(self) -> Cost:
        self._wall, self._cpu, self._server = time.perf_counter(), cpu_seconds(), cpu_seconds(self._pid)
        return self

    def __exit__(self, *exc: object) -> None:
        wall, cpu, server = (
            time.perf_counter() - self._wall,
            cpu_seconds() - self._cpu,
            cpu_seconds(self._pid) - self._server,
        )
        self.rate = EVENTS / wall
        self.cpu_us, self.server_us = cpu * 1e6 / EVENTS, server * 1e6 / EVENTS

    def figures(self, baseline: Cost | None) -> str:
        ratio = f" ({self.cpu_us / baseline.cpu_us:.2f}x raw JetStream)" if baseline else ""
        return (
            f"{self.rate:,.0f} events/s, {self.cpu_us:.1f} us CPU an event{ratio}, nats-server {self.server_us:.1f} us"
        )


def messages(prefix: str) -> Messages:
    """EVENTS events as raw publishers send them: subject, payload, the outbox's headers (pre-built)."""
    out = []
    for n in range(EVENTS):
        subject, change = event(n, prefix)
        headers = {H_SCHEMA: schema_id(NodeHealthChanged), H_MSG_ID: uuid.uuid4().hex, H_SENT_AT: "x"}
        out.append((subject, msgspec.json.encode(change), headers))
    return out


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


async def raw(nc: Client, batch: Messages, cost: Cost) -> None:
    """Plain pipelined JetStream publishing of the same messages (no store)."""
    js = nc.jetstream()
    before = await stream_count(nc)
    with cost:
        for index in range(0, EVENTS, WINDOW):
            futures = [await js.publish_async(s, p, headers=h) for s, p, h in batch[index : index + WINDOW]]
            await asyncio.gather(*futures)
    assert await stream_count(nc) - before == EVENTS


async def raw_core(nc: Client, batch: Messages, cost: Cost) -> None:
    """Core publishes with a reply subject into one wildcard subscription that counts the acks: the wire floor."""
    prefix = nc.new_inbox()
    acks = 0
    window_done = asyncio.Event()
    expected = 0

    async def on_ack(msg: Msg) -> None:
        nonlocal acks
        acks += 1
        if acks == expected:
            window_done.set()

    sub = await nc.subscribe(prefix + ".*", cb=on_ack)
    before = await stream_count(nc)
    with cost:
        for index in range(0, EVENTS, WINDOW):
            window = batch[index : index + WINDOW]
            expected += len(window)
            window_done.clear()
            for n, (s, p, h) in enumerate(window, index):
                await nc.publish(s, p, reply=f"{prefix}.{n}", headers=h)
            await window_done.wait()
    await sub.unsubscribe()
    assert await stream_count(nc) - before == EVENTS


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


def profiler() -> subprocess.Popen[bytes] | None:
    """py-spy recording this process until stopped (SIGINT), when BENCH_OUTBOX_PROFILE names a file."""
    spy = shutil.which("py-spy")
    if not PROFILE or spy is None:
        return None
    argv = [spy, "record", "-p", str(os.getpid()), "-f", "raw", "-o", PROFILE, "-r", "200", "--nonblocking"]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def read_and_forget(path: Path) -> tuple[float, float]:
    """CPU µs an event (this process) of committing EVENTS outbox rows, and of reading and forgetting them as the
    relay does (batches of 1,000, one DELETE each), without NATS."""
    store = await Store.open(path)
    started = cpu_seconds()
    await commit(store, "sql")
    committed, started, after = cpu_seconds() - started, cpu_seconds(), 0
    while rows := await store.pending_outbox(1000, after=after):
        after = rows[-1]["seq"]
        await store.forget_outbox(rows[0]["seq"], after)
    forgotten = cpu_seconds() - started
    await store.close()
    return committed * 1e6 / EVENTS, forgotten * 1e6 / EVENTS


async def drain(nc: Client, path: Path, cost: Cost) -> float:
    """Events/s writing the outbox; `cost`: the relay emptying the full outbox into the stream."""
    store = await Store.open(path)
    written = await commit(store, "drain")
    before = await stream_count(nc)
    relay = OutboxRelay(store, nc.jetstream())
    spy = profiler()
    with cost:
        await relay.flush()
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(60)
    assert await stream_count(nc) - before == EVENTS and await store.outbox_size() == 0
    await store.close()
    return EVENTS / written


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
    assert server.process is not None
    pid = server.process.pid
    core, js, relay = Cost(pid), Cost(pid), Cost(pid)
    try:
        nc = await nats.connect(server.url)
        await ensure_streams(nc.jetstream())
        load_before = os.getloadavg()
        await raw_core(nc, messages("core"), core)
        await raw(nc, messages("raw"), js)
        write_rate = await drain(nc, tmp_path / "drain.db", relay)
        live_rate = await live(nc, tmp_path / "live.db")
        tx_rate = await per_event_writes(tmp_path / "tx.db", min(EVENTS, 10_000))
        commit_us, forget_us = await read_and_forget(tmp_path / "sql.db")
        load_after = os.getloadavg()
        await nc.close()
    finally:
        server.stop()
    report(
        f"outbox relay, {EVENTS:,} events (NodeHealthChanged, FLEET_EVENTS on file storage)",
        {
            "raw nats-py core publish + reply": core.figures(js),
            "raw nats-py js.publish_async": js.figures(None) + " (baseline)",
            "relay drain of a full outbox": relay.figures(js)
            + f", {relay.rate / js.rate:.2f}x raw JetStream events/s, {relay.cpu_us / core.cpu_us:.2f}x core CPU",
            "outbox write (Store.run, 1,000/tx)": f"{write_rate:,.0f} events/s",
            "outbox write (Store.transaction, await per event)": f"{tx_rate:,.0f} events/s",
            "SQLite alone: commit (Store.run) / read + forget": f"{commit_us:.1f} / {forget_us:.1f} us CPU an event",
            "commit + relay, end to end": f"{live_rate:,.0f} events/s ({live_rate / js.rate:.2f}x raw JetStream)",
            "load average (1/5/15 min) before": " / ".join(f"{x:.2f}" for x in load_before),
            "load average (1/5/15 min) after": " / ".join(f"{x:.2f}" for x in load_after),
        },
    )
