"""Heartbeat benchmark: ingest rate against raw nats-py in the same run, memory per node, detection latency.

Run: `.venv/bin/pytest -m bench -s tests/bench/bench_heartbeat.py`. Sizes come from BENCH_HB_CLUSTERS,
BENCH_HB_NODES, BENCH_HB_INTERVAL_S and BENCH_HB_DURATION_S. The publisher is a separate process
(`python -m flotilla_client.loadgen`); the raw subscriber and the service each receive the same offered
load. It prints figures; the only assertions are about correctness (health right, zero spurious transitions).
"""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import time
import tracemalloc
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest

from flotilla_client.loadgen import cluster_ids, node_ids, template
from flotilla_client.natsserver import NatsServer, free_port
from flotilla_contracts.catalogue import subject_for
from flotilla_contracts.envelope import H_MSG_ID, H_SCHEMA, schema_id
from flotilla_contracts.v1.heartbeat import Heartbeat, NodeHealth
from flotilla_contracts.v1.registration import ApprovalSource, ClusterIdentity, ClusterInfo, ClusterState
from flotilla_contracts.v1.registration_events import ClusterApproved
from flotilla_heartbeat.app import SPEC
from flotilla_heartbeat.domain import HealthModel
from flotilla_heartbeat.health_state import Policy
from flotilla_heartbeat.settings import Settings
from flotilla_runtime import service
from flotilla_runtime.bus import ensure_streams
from flotilla_testkit import eventually

pytestmark = pytest.mark.bench

CLUSTERS = int(os.environ.get("BENCH_HB_CLUSTERS", "500"))
NODES = int(os.environ.get("BENCH_HB_NODES", "100"))
INTERVAL_S = float(os.environ.get("BENCH_HB_INTERVAL_S", "1.0"))
DURATION_S = float(os.environ.get("BENCH_HB_DURATION_S", "14"))
STOPPED = int(os.environ.get("BENCH_HB_STOPPED", "20"))
MISSED = 3


def loadgen(url: str, stop_random: int = 0) -> subprocess.Popen[bytes]:
    args = ["--server", url, "--clusters", str(CLUSTERS), "--nodes", str(NODES), "--interval", str(INTERVAL_S)]
    args += ["--duration", str(DURATION_S), "--prefix", "bench", "--stop-random", str(stop_random), "--seed", "7"]
    return subprocess.Popen([sys.executable, "-m", "flotilla_client.loadgen", *args], stdout=subprocess.PIPE)


async def sustained_rate(proc: subprocess.Popen[bytes], counter: Any) -> tuple[float, dict[str, Any]]:
    """Messages/s counted over the middle half of the publisher's run."""
    marks: list[tuple[float, int]] = []
    while proc.poll() is None:
        await asyncio.sleep(0.25)  # sleep: the rate sampler's period
        marks.append((time.monotonic(), counter()))
    assert proc.stdout is not None
    result: dict[str, Any] = msgspec.json.decode(proc.stdout.read())
    (t1, n1), (t2, n2) = marks[len(marks) // 4], marks[3 * len(marks) // 4]
    return (n2 - n1) / (t2 - t1), result


async def raw_baseline(url: str) -> tuple[float, dict[str, Any]]:
    nc = await nats.connect(url, pending_size=64 * 1024 * 1024)
    count = 0

    async def on_message(_msg: Any) -> None:
        nonlocal count
        count += 1

    await nc.subscribe("fleet.v1.hb.*.*", cb=on_message, pending_msgs_limit=2_000_000, pending_bytes_limit=2 << 30)
    rate, result = await sustained_rate(loadgen(url), lambda: count)
    await nc.close()
    return rate, result


def memory_per_node(nodes: int = 50_000) -> float:
    """Bytes the health model holds per tracked node (tracemalloc), fed real decoded heartbeats."""
    decoder = msgspec.json.Decoder(Heartbeat)
    clusters = cluster_ids(nodes // 100, "mem")
    model = HealthModel(Policy(), started=0.0)
    for cluster in clusters:
        model.add_cluster(cluster)
    bodies = []
    for cluster in clusters:
        for node in node_ids(100):
            head, middle, tail = template(cluster, node)
            bodies.append(b"".join((head, b"1", middle, b"2024-01-01T00:00:00Z", tail)))
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for round_ in range(3):  # three rounds, so the timing wheel holds what it holds in steady state
        model.begin(round_ * 10.0, 1.7e9 + round_ * 10.0)
        for body in bodies:
            model.observe(decoder.decode(body))
        model.tick(round_ * 10.0 + 0.1, 1.7e9)
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return used / nodes


async def service_run(url: str, state: Path) -> dict[str, Any]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await ensure_streams(js)
    clusters = cluster_ids(CLUSTERS, "bench")
    for cluster in clusters:
        await js.publish(
            subject_for(ClusterApproved, cluster_id=cluster),
            msgspec.json.encode(approved(cluster)),
            headers={H_SCHEMA: schema_id(ClusterApproved), H_MSG_ID: uuid.uuid4().hex},
        )
    settings = Settings(
        nats_url=url,
        state_dir=str(state),
        instance_id="bench",
        interval_s=INTERVAL_S,
        missed_intervals=MISSED,
        lost_after_s=600.0,
        startup_grace_s=0.0,
        flap_window_s=MISSED * INTERVAL_S,
        log_format="text",
        log_level="WARNING",
        trace_sample_ratio=0.0,
    )
    apps: list[Any] = []

    async def capture(app: Any) -> None:
        apps.append(app)
        await SPEC.setup(app)

    stop = asyncio.Event()
    task = asyncio.create_task(service.run(service.ServiceSpec(**{**SPEC.__dict__, "setup": capture}), settings, stop))
    await eventually(
        lambda: apps and apps[0].ready and len(apps[0].heartbeats.model.clusters) == CLUSTERS,
        f"the replica ready with {CLUSTERS} clusters",
        timeout_s=60,
        every_s=0.1,
    )
    hb = apps[0].heartbeats
    transitions: list[tuple[str, Any]] = []
    original = hb.model.tick

    def recording_tick(now: float, wall: float, lag: float = 0.0) -> list[Any]:
        found = original(now, wall, lag)
        transitions.extend((type(t).__name__, t) for t in found)
        return found

    hb.model.tick = recording_tick
    rate, result = await sustained_rate(loadgen(url, STOPPED), lambda: hb.ingest.applied)
    # Nodes stop within the first half of the run, so each has had time to be detected by its end. Judge the
    # state now: once the publisher is gone, every node is (rightly) about to become Unreachable.
    transitions = list(transitions)
    stopped = {tuple(key.split("/")): at for key, at in result["stopped"].items()}
    states = {(c.cluster_id, n.node_id): n.state for c in hb.model.clusters.values() for n in c.nodes.values()}
    stop.set()
    await task
    await nc.close()
    return {
        "rate": rate,
        "result": result,
        "stopped": stopped,
        "transitions": transitions,
        "states": states,
        "dropped": dict(hb.ingest.dropped),
    }


def approved(cluster_id: str) -> ClusterApproved:
    now = datetime.now(UTC)
    identity = ClusterIdentity(uid=cluster_id, name=cluster_id.lower(), kubernetes_version="v1.30.4")
    info = ClusterInfo(
        cluster_id=cluster_id, identity=identity, state=ClusterState.APPROVED, joined_at=now, updated_at=now
    )
    return ClusterApproved(cluster=info, approved_by=ApprovalSource.ADMIN, occurred_at=now)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def test_heartbeat_benchmark(tmp_path: Path) -> None:
    server = NatsServer(state_dir=tmp_path / "nats", port=free_port())
    server.start()
    try:
        raw_rate, raw_result = await raw_baseline(server.url)
        run = await service_run(server.url, tmp_path / "hb")
    finally:
        server.stop()
    per_node = memory_per_node()
    offered = CLUSTERS * NODES / INTERVAL_S
    latencies: list[float] = []
    since_last: list[float] = []
    spurious = []
    ended_at = run["result"]["ended_at"]  # after this the publisher is gone and every node rightly goes silent
    for kind, event in run["transitions"]:
        if kind != "NodeHealthChanged" or event.from_ is None or event.occurred_at.timestamp() > ended_at:
            continue
        stopped_at = run["stopped"].get((event.cluster_id, event.node_id))
        if event.to is NodeHealth.UNREACHABLE and stopped_at is not None:
            latencies.append(event.occurred_at.timestamp() - stopped_at)
            since_last.append((event.occurred_at - event.last_heartbeat_at).total_seconds())
        else:
            spurious.append(event)
    wrong = {
        key: state
        for key, state in run["states"].items()
        if state is not (NodeHealth.UNREACHABLE if key in run["stopped"] else NodeHealth.READY)
    }
    print(
        f"\nheartbeat benchmark: {CLUSTERS} clusters x {NODES} nodes every {INTERVAL_S:g}s "
        f"(offered {offered:,.0f} hb/s; publisher achieved {raw_result['sent'] / DURATION_S:,.0f}/s in the raw run, "
        f"{run['result']['sent'] / DURATION_S:,.0f}/s in the service run)\n"
        f"  raw nats-py subscriber : {raw_rate:,.0f} hb/s\n"
        f"  heartbeat service      : {run['rate']:,.0f} hb/s applied with correct health "
        f"= {run['rate'] / raw_rate:.2f}x raw\n"
        f"  memory per tracked node: {per_node:,.0f} bytes (health model, tracemalloc, 50k nodes)\n"
        f"  detection after stop   : p50 {percentile(latencies, 0.5):.2f}s, p99 {percentile(latencies, 0.99):.2f}s "
        f"over {len(latencies)} of {len(run['stopped'])} stopped nodes "
        f"(bound: {MISSED} x {INTERVAL_S:g}s + 1s = {MISSED * INTERVAL_S + 1:g}s after the last heartbeat)\n"
        f"  after last heartbeat   : p50 {percentile(since_last, 0.5):.2f}s, p99 {percentile(since_last, 0.99):.2f}s "
        f"(publisher lateness: {run['result']['late_s']:.2f}s)\n"
        f"  spurious transitions   : {len(spurious)}; nodes in a wrong state at the end: {len(wrong)} "
        f"{dict(Counter(str(v) for v in wrong.values()))}; "
        f"dropped: {run['dropped']}"
    )
    assert spurious == [], sorted({(e.to, e.message[:40], e.occurred_at.timestamp() - ended_at) for e in spurious})[:5]
    assert wrong == {}
    assert len(latencies) == len(run["stopped"])
