"""Heartbeat capacity and cost side by side (issue 21 item 1): Flotilla against a bare subscriber and etcd Leases.

Run: `.venv/bin/pytest -m bench -s tests/bench/bench_heartbeat_cost.py`. In one run, at the same offered load
(BENCH_HBC_CLUSTERS x BENCH_HBC_NODES nodes every BENCH_HBC_INTERVAL_S, 10,000 nodes at 2,500/s by default),
each party in its own process, it measures server-side CPU per heartbeat from /proc:

- (a) a bare nats-py subscriber: nats-server + the subscriber;
- (b) the heartbeat service (`python -m flotilla_heartbeat`): nats-server + the service, health checked
  (every node Ready but the stopped ones, Unreachable; zero spurious transitions), once with one heartbeat a
  message and once with HeartbeatBatch (one message per cluster and interval);
- (c) the Lease path's floor: etcd doing compare-and-put renewals of as many keys at the same rate (aetcd);

then the service's maximum sustained rate on one replica (several generator processes, pre-encoded
messages, batched) and etcd's maximum. It prints figures, ratios and the load average; it asserts only
correctness. When a generator cannot keep its schedule it says so. Each replica's cost with partitions is
bench_heartbeat_partitions.py.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import nats
import pytest
from bench_heartbeat import memory_per_node
from hb_cost_checks import approve, dropped_of, health_counts, node_latencies, spurious_transitions, watch_node_health
from hb_cost_support import (
    Child,
    Etcd,
    Service,
    Window,
    etcd_renewer,
    kill_started,
    load_average,
    loadgens,
    metric,
    raw_subscriber,
    rss_bytes,
    stop_all,
)

from flotilla_client.loadgen import cluster_ids
from flotilla_client.natsserver import NatsServer, free_port, port_open
from flotilla_contracts import subjects
from flotilla_heartbeat.partitions import mapping_config
from flotilla_runtime.bus import ensure_streams
from flotilla_testkit import eventually

pytestmark = [pytest.mark.bench, pytest.mark.timeout(1800)]

CLUSTERS = int(os.environ.get("BENCH_HBC_CLUSTERS", "100"))
NODES = int(os.environ.get("BENCH_HBC_NODES", "100"))
INTERVAL_S = float(os.environ.get("BENCH_HBC_INTERVAL_S", "4"))
MEASURE_S = float(os.environ.get("BENCH_HBC_MEASURE_S", "16"))
GENERATORS = int(os.environ.get("BENCH_HBC_GENERATORS", "2"))
STOPPED = 20
BATCH = int(os.environ.get("BENCH_HBC_BATCH", "100"))  # heartbeats per HeartbeatBatch
# The maximum rate: 20,000 nodes every 0.1 s (200,000 hb/s offered), judged Unreachable only after 30 s of silence,
# so that a generator running late on a busy machine measures capacity instead of making health events.
MAX_CLUSTERS = int(os.environ.get("BENCH_HBC_MAX_CLUSTERS", "200"))  # x NODES
MAX_INTERVAL_S = float(os.environ.get("BENCH_HBC_MAX_INTERVAL_S", "0.1"))
TOTAL = CLUSTERS * NODES
APPLIED = "flotilla_heartbeats_applied_total"


def stage(what: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')} {what} (load {load_average()})", flush=True)


def late(results: list[dict[str, Any]]) -> float:
    return max((r.get("late_s", 0.0) for r in results), default=0.0)


def schedule_note(late_s: float, interval_s: float) -> str:
    if late_s <= interval_s / 2:
        return f"kept its schedule (at most {late_s:.2f}s late)"
    return f"DID NOT keep its schedule: fell {late_s:.1f}s behind, figures are for what it achieved"


async def bare(url: str) -> dict[str, Any]:
    """(a) nats-server + a bare nats-py subscriber."""
    sub = await raw_subscriber(url, f"{subjects.HB_PARTITION_PREFIX}.>")
    gens = await loadgens(url, GENERATORS, CLUSTERS, NODES, INTERVAL_S)
    await eventually(lambda: sub.n >= 2 * TOTAL, "two rounds at the bare subscriber", timeout_s=120, every_s=0.2)
    stage("bare subscriber: measuring")
    window = Window({"server": server_pid(url), "subscriber": sub.pid})
    window.open(sub.n)
    await asyncio.sleep(MEASURE_S)  # sleep: the measurement window
    figures = window.close(sub.n)
    results = await stop_all(gens)
    figures.update(late_s=late(results), **(await sub.stop()))
    return figures


_servers: dict[str, int] = {}


def server_pid(url: str) -> int:
    return _servers[url]


async def service(url: str, state: Path, prefix: str, *extra: str) -> dict[str, Any]:
    """(b) nats-server + the heartbeat service (one replica owning both partitions), health and transitions
    checked while the load runs."""
    nc = await nats.connect(url)
    await ensure_streams(nc.jetstream())
    await approve(nc, cluster_ids(CLUSTERS, prefix))
    services = [await Service.start(url, state / f"{prefix}-r0", INTERVAL_S, partition_count="2")]

    async def total(name: str) -> float:
        return sum([await metric(s.port, name) for s in services])

    await eventually(
        lambda: total("flotilla_heartbeat_tracked_clusters"),
        f"{CLUSTERS} clusters approved at the service",
        timeout_s=120,
        every_s=0.2,
        retrying=(OSError,),
        until=lambda n: n >= CLUSTERS,
    )
    stage(f"service {prefix}: ready")
    rss0 = [rss_bytes(s.pid) for s in services]
    events = await watch_node_health(nc, prefix)
    stopping = ["--stop-random", str(STOPPED), "--stop-window", f"{INTERVAL_S + 1},{2 * INTERVAL_S}"]  # once seen
    gens = await loadgens(url, GENERATORS, CLUSTERS, NODES, INTERVAL_S, *extra, prefix=prefix, first=stopping)

    async def settled() -> bool:  # every node first seen and every stopped node detected, through the outbox
        return len(events.seen) >= TOTAL + STOPPED and await total(APPLIED) >= 3 * TOTAL

    await eventually(settled, "first-seen and stopped nodes' events published", timeout_s=180, every_s=0.5)
    stage(f"service {prefix}: settled, measuring")
    window = Window({"server": server_pid(url), **{f"service{r}": s.pid for r, s in enumerate(services)}})
    before = [await metric(s.port, APPLIED) for s in services]
    window.open(sum(before))
    await asyncio.sleep(MEASURE_S)  # sleep: the measurement window
    after = [await metric(s.port, APPLIED) for s in services]
    figures: dict[str, Any] = dict(window.close(sum(after)))
    figures["rss_per_node"] = sum(rss_bytes(s.pid) - r0 for s, r0 in zip(services, rss0, strict=True)) / TOTAL
    figures["counts"] = await health_counts(nc)
    figures["latency"] = await node_latencies(nc)
    results = await stop_all(gens)
    ended_at = time.time()
    stopped = results[0].get("stopped", {})
    figures.update(late_s=late(results), stopped=len(stopped))
    figures["spurious"] = spurious_transitions(events.changes, stopped, ended_at)
    figures["dropped"] = {k: v for s in services for k, v in (await asyncio.to_thread(dropped_of, s.port)).items()}
    for s in services:
        await s.stop()
    await events.close()
    await nc.close()
    return figures


async def saturate(url: str, state: Path, prefix: str, *extra: str) -> dict[str, Any]:
    """The service's maximum sustained rate on one replica: more offered than it can take, from several processes."""
    nc = await nats.connect(url)
    clusters = MAX_CLUSTERS
    await approve(nc, cluster_ids(clusters, prefix))
    missed = str(int(30 / MAX_INTERVAL_S))
    svc = await Service.start(
        url, state / prefix, MAX_INTERVAL_S, partition_count="2", rate_headroom="10", missed_intervals=missed
    )
    await eventually(
        lambda: metric(svc.port, "flotilla_heartbeat_tracked_clusters"),
        f"{clusters} clusters approved at the service",
        timeout_s=120,
        every_s=0.2,
        retrying=(OSError,),
        until=lambda n: n >= clusters,
    )
    # Every node first seen at a gentle rate, and its event out of the outbox, before the flood: a saturated
    # service's outbox drains slowly, and first-seen events are not what this measures.
    events = await watch_node_health(nc, prefix)
    warm = await loadgens(url, 1, clusters, NODES, 2.0, *extra, prefix=prefix)
    await eventually(
        lambda: len(events.seen),
        "every node first seen and published",
        timeout_s=300,
        until=lambda n: n >= clusters * NODES,
    )
    await stop_all(warm)
    base = await metric(svc.port, APPLIED)
    gens = await loadgens(url, GENERATORS + 1, clusters, NODES, MAX_INTERVAL_S, *extra, prefix=prefix)
    await eventually(
        lambda: metric(svc.port, APPLIED),
        "two rounds of the flood applied",
        timeout_s=120,
        retrying=(OSError,),
        until=lambda n: n >= base + 2 * clusters * NODES,
    )
    stage("maximum: measuring")
    window = Window({"server": server_pid(url), "service": svc.pid})
    window.open(await metric(svc.port, APPLIED))
    await asyncio.sleep(MEASURE_S)  # sleep: the measurement window
    figures: dict[str, Any] = dict(window.close(await metric(svc.port, APPLIED)))
    figures["backlog"] = await metric(svc.port, "flotilla_heartbeat_backlog_messages")
    figures["lag_s"] = await metric(svc.port, "flotilla_heartbeat_lag_seconds")
    results = await stop_all(gens)
    figures["late_s"] = late(results)
    figures["offered"] = clusters * NODES / MAX_INTERVAL_S
    figures["dropped"] = await asyncio.to_thread(dropped_of, svc.port)
    await svc.stop()
    await events.close()
    await nc.close()
    return figures


async def leases(state: Path, flat_out: bool) -> dict[str, Any]:
    """(c) etcd compare-and-put renewals of TOTAL keys at the same rate (or as fast as it goes)."""
    etcd = await Etcd.start(state / ("etcd-max" if flat_out else "etcd"))
    await eventually(lambda: port_open("127.0.0.1", etcd.port), "etcd listening", timeout_s=30)
    rss0 = rss_bytes(etcd.pid)
    renewer = await Child.start(*etcd_renewer(etcd.port, TOTAL, INTERVAL_S, *(["--max"] if flat_out else [])))
    await asyncio.wait_for(renewer.ready.wait(), 120)
    await eventually(lambda: renewer.n >= TOTAL, "one round of renewals", timeout_s=120, every_s=0.2)
    stage("etcd: measuring")
    window = Window({"etcd": etcd.pid})
    window.open(renewer.n)
    await asyncio.sleep(MEASURE_S)  # sleep: the measurement window
    figures: dict[str, Any] = dict(window.close(renewer.n))
    figures["rss_per_lease"] = (rss_bytes(etcd.pid) - rss0) / TOTAL
    figures.update(await renewer.stop())
    await etcd.stop()
    return figures


def us(value: float) -> str:
    return f"{value:,.1f} µs"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def test_heartbeat_cost(tmp_path: Path) -> None:
    server = NatsServer(state_dir=tmp_path / "nats", port=free_port(), extra_config=mapping_config(2))
    server.start()
    assert server.process is not None
    _servers[server.url] = server.process.pid
    loads = [load_average()]
    try:
        raw = await bare(server.url)
        loads.append(load_average())
        single = await service(server.url, tmp_path, "one")
        loads.append(load_average())
        batched = await service(server.url, tmp_path, "bat", "--batch", str(BATCH))
        loads.append(load_average())
        most = await saturate(server.url, tmp_path, "max", "--batch", str(BATCH))
        loads.append(load_average())
        etcd = await leases(tmp_path, flat_out=False)
        loads.append(load_average())
        etcd_max = await leases(tmp_path, flat_out=True)
        loads.append(load_average())
    finally:
        await kill_started()
        server.stop()
    batched["model_per_node"] = memory_per_node()
    report(raw, single, batched, most, etcd, etcd_max, loads)
    for run in (single, batched):
        assert run["spurious"] == [], run["spurious"][:5]
        assert run["counts"] == {"ready": TOTAL - STOPPED, "not_ready": 0, "unreachable": STOPPED, "lost": 0}
    assert etcd["failed"] == 0 and etcd_max["failed"] == 0  # one writer per lease: every compare holds


def saturation(most: dict[str, Any]) -> str:
    if most["late_s"] > MAX_INTERVAL_S / 2:
        return "the generators could not offer more: the service's capacity is at least this"
    if most["rate"] >= 0.97 * most["offered"]:
        return "it took all that was offered: its capacity is higher"
    return "saturated: it took less than was offered"


def service_line(run: dict[str, Any], raw: dict[str, Any]) -> str:
    lat = run["latency"]
    return (
        f"{us(run['server_us'])} server CPU/hb (nats-server {us(run['server_us'] - run['service0_us'])}, "
        f"service {us(run['service0_us'])}) = {run['server_us'] / raw['server_us']:.2f}x bare; "
        f"{run['rate']:,.0f} hb/s applied; last heartbeat's latency p50 {percentile(lat, 0.5) * 1000:.1f} ms, "
        f"p99 {percentile(lat, 0.99) * 1000:.1f} ms; RSS growth {run['rss_per_node']:,.0f} B per tracked node;\n"
        f"      health {run['counts']}, {len(run['spurious'])} spurious transitions, {run['stopped']} stopped nodes "
        f"all detected; dropped {run['dropped']}; generators {schedule_note(run['late_s'], INTERVAL_S)}"
    )


def report(
    raw: dict[str, Any],
    single: dict[str, Any],
    batched: dict[str, Any],
    most: dict[str, Any],
    etcd: dict[str, Any],
    etcd_max: dict[str, Any],
    loads: list[str],
) -> None:
    offered = TOTAL / INTERVAL_S
    print(
        f"\nheartbeat cost: {CLUSTERS} clusters x {NODES} nodes every {INTERVAL_S:g}s = {offered:,.0f} hb/s offered "
        f"by {GENERATORS} generator processes; windows of {MEASURE_S:g}s\n"
        f"  load average (1/5/15 min) before and after each part: {' | '.join(loads)}\n"
        f"  (a) bare nats-py subscriber: {us(raw['server_us'])} server CPU/hb (nats-server "
        f"{us(raw['server_us'] - raw['subscriber_us'])}, subscriber {us(raw['subscriber_us'])}); "
        f"{raw['rate']:,.0f} hb/s; latency p50 {raw['p50_ms']:.1f} ms, p99 {raw['p99_ms']:.1f} ms; "
        f"generators {schedule_note(raw['late_s'], INTERVAL_S)}\n"
        f"  (b) service, one hb a message: {service_line(single, raw)}\n"
        f"  (b) service, batches of {BATCH}: {service_line(batched, raw)}\n"
        f"  memory per tracked node: {batched['model_per_node']:,.0f} B in the health model (tracemalloc, 50,000 "
        f"nodes); the service's RSS grew {batched['rss_per_node']:,.0f} B per node (model, checkpoint, SQLite cache, "
        f"first-seen events)\n"
        f"  (c) etcd Lease renewals: {us(etcd['etcd_us'])} etcd CPU/renewal = "
        f"{etcd['etcd_us'] / single['server_us']:.1f}x the service with single heartbeats, "
        f"{etcd['etcd_us'] / batched['server_us']:.1f}x with batches; {etcd['rate']:,.0f} renewals/s; "
        f"latency p50 {etcd['p50_ms']:.1f} ms, p99 {etcd['p99_ms']:.1f} ms; RSS growth "
        f"{etcd['rss_per_lease']:,.0f} B per lease; {etcd['failed']} failed compares; "
        f"renewer {schedule_note(etcd['late_s'], INTERVAL_S)}\n"
        f"  maximum, one replica, batches: {most['rate']:,.0f} hb/s applied of {most['offered']:,.0f}/s offered by "
        f"{GENERATORS + 1} processes ({us(most['server_us'])} server CPU/hb; backlog {most['backlog']:,.0f}, "
        f"lag {most['lag_s']:.1f}s; dropped {most['dropped']}); {saturation(most)};\n"
        f"      generators {schedule_note(most['late_s'], MAX_INTERVAL_S)}\n"
        f"  maximum, etcd: {etcd_max['rate']:,.0f} renewals/s ({us(etcd_max['etcd_us'])} CPU each, "
        f"p99 {etcd_max['p99_ms']:.1f} ms)"
    )
