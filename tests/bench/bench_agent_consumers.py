"""One durable consumer per node on the FLEET_AGENT work queue: how creation time and server memory grow with the count.

Run: `.venv/bin/pytest -m bench -s tests/bench/bench_agent_consumers.py`. BENCH_CONSUMERS (5000) durable pull
consumers, each filtered on one node's `fleet.v1.agent.<cluster>.<node>.>` as a node-agent creates it, on a
stream configured as FLEET_AGENT is (work-queue retention, file storage), created by raw nats-py with
BENCH_CONSUMER_IN_FLIGHT (32, as the packed sim) at a time. Printed per slice of 1,000: creations/s, p99
latency, nats-server RSS and its JetStream folder. This is the peer alone (nats-server), no Flotilla code: it
says how far the per-node consumer design itself goes on this machine (issue 21 item 2, the 100,000-node fleet).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import nats
import pytest
from bench_support import percentile, report, rss_mib

from flotilla_client.natsserver import NatsServer, free_port
from flotilla_contracts import subjects
from flotilla_contracts.streams import FLEET_AGENT, agent_consumer
from flotilla_runtime.bus import ensure_streams

pytestmark = pytest.mark.bench

COUNT = int(os.environ.get("BENCH_CONSUMERS", "5000"))
IN_FLIGHT = int(os.environ.get("BENCH_CONSUMER_IN_FLIGHT", "32"))
SLICE = 1000


def folder_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


@pytest.mark.timeout(3600)
async def test_per_node_consumers_creation_and_memory(tmp_path: Path) -> None:
    server = NatsServer(state_dir=tmp_path / "nats", port=free_port(), log_file=tmp_path / "nats-server.log")
    server.start()
    try:
        nc = await nats.connect(server.url)
        js = nc.jetstream(timeout=30)
        await ensure_streams(js, specs=(FLEET_AGENT,))
        assert server.process is not None
        pid = server.process.pid
        baseline = rss_mib(pid)
        figures: dict[str, str] = {"server RSS before": f"{baseline:.0f} MiB"}
        latencies: list[float] = []

        async def create(i: int) -> None:
            cluster, node = f"c{i // 10:05d}", f"n{i % 10:02d}"
            started = time.perf_counter()
            sub = await js.pull_subscribe(
                subjects.agent_commands_for(cluster, node),
                durable=agent_consumer(cluster, node),
                stream=FLEET_AGENT.name,
            )
            latencies.append(time.perf_counter() - started)
            await sub.unsubscribe()  # the durable consumer stays; one connection may hold only so many subscriptions

        for first in range(0, COUNT, SLICE):
            batch = iter(range(first, min(first + SLICE, COUNT)))
            latencies.clear()
            started = time.perf_counter()

            async def worker(todo: object = batch) -> None:
                for i in todo:  # type: ignore[attr-defined]
                    await create(i)

            await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
            took = time.perf_counter() - started
            key = f"consumers {first + 1}-{first + len(latencies)}"
            figures[key] = (
                f"{len(latencies) / took:6.0f}/s, p99 {percentile(latencies, 0.99) * 1000:6.0f} ms, "
                f"server RSS {rss_mib(pid):6.0f} MiB, JetStream folder {folder_mib(tmp_path / 'nats'):6.0f} MiB"
            )
            print(f"  {key}: {figures[key]}", flush=True)
        growth = (rss_mib(pid) - baseline) / COUNT * 1024
        figures["server memory per consumer"] = f"{growth:.0f} KiB"
        figures["load average"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        report(f"{COUNT} per-node durable consumers on a work queue ({IN_FLIGHT} creations in flight)", figures)
        info = await js.stream_info(FLEET_AGENT.name)
        assert info.state.consumer_count == COUNT
        await nc.close()
    finally:
        server.stop()
