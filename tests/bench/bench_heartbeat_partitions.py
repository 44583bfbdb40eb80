"""With partitions, does a replica's CPU per heartbeat stay the same? (issue 21 item 1: N replicas carry N x the fleet)

Run: `.venv/bin/pytest -m bench -s tests/bench/bench_heartbeat_partitions.py` (about 5 minutes). Two set-ups at
the same load per replica, so that each replica's fixed cost (10 Hz tick loop, membership, checkpoints, metrics)
is the same share in both and CPU per heartbeat compares directly:

- A: one replica owning both partitions, BENCH_HBP_CLUSTERS x BENCH_HBP_NODES nodes every BENCH_HBP_INTERVAL_S
  (10,000 nodes every 0.4 s = 25,000 hb/s, batches of 100, from BENCH_HBP_GENERATORS processes);
- B: two replicas owning one partition each, twice the fleet at twice the rate (25,000 hb/s each).

Both run from their own state directories, alternated A B A B ... BENCH_HBP_ROUNDS times in one run (a restart
restores the checkpoint under a startup grace, so no node is first seen twice or blamed for the swap). Each
round measures every replica at rest (started, no heartbeats: its fixed cost), then loaded: CPU from /proc over
one window for nats-server, every replica and every generator; each replica's CPU per heartbeat it applied, and
the same net of its fixed cost. The generators do the same work per heartbeat in A and B: their cost is a control
that moves when the machine does. Health is checked every round (every node Ready, no transition but first-seen
in the whole run). It prints each round, the medians, the spread and the ratios of B to A measured in the same
run, and the load average; it asserts only correctness.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
from hb_cost_checks import approve, dropped_of, health_counts, watch_node_health
from hb_cost_support import Service, Window, kill_started, load_average, loadgens, metric, stop_all

from flotilla_client.loadgen import cluster_ids
from flotilla_client.natsserver import NatsServer, free_port
from flotilla_heartbeat.partitions import mapping_config
from flotilla_runtime.bus import ensure_streams
from flotilla_testkit import ConditionNotMet, eventually

pytestmark = [pytest.mark.bench, pytest.mark.timeout(1800)]

CLUSTERS = int(os.environ.get("BENCH_HBP_CLUSTERS", "100"))  # per replica
NODES = int(os.environ.get("BENCH_HBP_NODES", "100"))
INTERVAL_S = float(os.environ.get("BENCH_HBP_INTERVAL_S", "0.4"))
GENERATORS = int(os.environ.get("BENCH_HBP_GENERATORS", "2"))  # per replica's share of the fleet
ROUNDS = int(os.environ.get("BENCH_HBP_ROUNDS", "3"))
MEASURE_S = float(os.environ.get("BENCH_HBP_MEASURE_S", "15"))
REST_S = float(os.environ.get("BENCH_HBP_REST_S", "10"))
BATCH = "100"
PREFIX = "part"
GRACE_S = 120.0  # a restarted set-up blames nobody for the time the other one ran
SILENCE_S = 10.0  # Unreachable only after this much silence: a late generator measures, it does not make events
APPLIED = "flotilla_heartbeats_applied_total"


def stage(what: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')} {what} (load {load_average()})", flush=True)


@dataclass
class Setup:
    """A: one replica owning both partitions; B: two replicas, one partition each, with twice the fleet."""

    name: str
    owned: list[str]
    state: Path

    @property
    def clusters(self) -> int:
        return CLUSTERS * len(self.owned)

    @property
    def nodes(self) -> int:
        return self.clusters * NODES

    async def start(self, url: str) -> list[Service]:
        missed = str(max(3, int(SILENCE_S / INTERVAL_S)))
        self.state.mkdir(parents=True, exist_ok=True)
        return [
            await Service.start(
                url,
                self.state / f"r{r}",
                INTERVAL_S,
                partition_count="2",
                partitions=part,
                rate_headroom="10",
                missed_intervals=missed,
                lost_after_s=str(10 * SILENCE_S),
                startup_grace_s=str(GRACE_S),
            )
            for r, part in enumerate(self.owned)
        ]

    async def load(self, url: str, interval_s: float) -> list[Any]:
        procs = GENERATORS * len(self.owned)
        return await loadgens(url, procs, self.clusters, NODES, interval_s, "--batch", BATCH, prefix=PREFIX)


async def total(services: list[Service], name: str) -> float:
    return sum([await metric(s.port, name) for s in services])


async def members_ready(services: list[Service]) -> None:
    """Every approved cluster is a member at one of the replicas (all 2 x CLUSTERS: A tracks B's too)."""
    await eventually(
        lambda: total(services, "flotilla_heartbeat_tracked_clusters"),
        "every approved cluster tracked",
        timeout_s=120,
        every_s=0.2,
        retrying=(OSError,),
        until=lambda n: n >= 2 * CLUSTERS,
    )


async def warm(url: str, setup: Setup, events: Any) -> None:
    """First time only: every node first seen at a gentle rate, and its event out of the outbox."""
    services = await setup.start(url)
    await members_ready(services)
    before = sum(1 for e in events.changes if e.from_ is None)
    gens = await setup.load(url, 2.0)
    await eventually(
        lambda: sum(1 for e in events.changes if e.from_ is None),
        f"{setup.name}: every node first seen and published",
        timeout_s=300,
        until=lambda n: n >= before + setup.nodes,
    )
    await stop_all(gens)
    for s in services:
        await s.stop()


async def complete_health(nc: Any, setup: Setup) -> dict[str, int]:
    """`flotilla health` until every partition answers (a replica the server cut off is back within seconds);
    after a minute, what it last said."""
    expected = {"ready": setup.nodes, "not_ready": 0, "unreachable": 0, "lost": 0}
    try:
        return await eventually(
            lambda: health_counts(nc),
            f"{setup.name}: health of every node",
            timeout_s=60,
            retrying=(nats.errors.TimeoutError, nats.errors.NoRespondersError),  # a replica reconnecting
            until=lambda counts: counts == expected,
        )
    except ConditionNotMet:
        return await health_counts(nc)


async def one_round(url: str, nc: Any, setup: Setup, server_pid: int) -> dict[str, Any]:
    """Start the set-up from its state, measure it at rest, then loaded; check health; stop it."""
    services = await setup.start(url)
    await members_ready(services)
    pids = {f"r{r}": s.pid for r, s in enumerate(services)}
    rest = Window(pids)
    rest.open(0)
    await asyncio.sleep(REST_S)  # sleep: the measurement window at rest
    rest.close(0)
    fixed = {name: rest.figures[f"{name}_us"] / 1e6 / rest.figures["elapsed"] for name in pids}  # CPU-s per s
    gens = await setup.load(url, INTERVAL_S)
    base = await total(services, APPLIED)
    await eventually(
        lambda: total(services, APPLIED),
        f"{setup.name}: two rounds applied",
        timeout_s=120,
        retrying=(OSError,),
        until=lambda n: n >= base + 2 * setup.nodes,
    )
    stage(f"{setup.name}: measuring")
    window = Window({"nats": server_pid, **pids, **{f"g{i}": g.pid for i, g in enumerate(gens)}})
    before = [await metric(s.port, APPLIED) for s in services]
    window.open(sum(before))
    await asyncio.sleep(MEASURE_S)  # sleep: the measurement window
    after = [await metric(s.port, APPLIED) for s in services]
    figures = window.close(sum(after))
    counts = await complete_health(nc, setup)
    reconnects = [await metric(s.port, "flotilla_bus_reconnects_total") for s in services]
    results = await stop_all(gens)
    dropped = {k: v for s in services for k, v in (await asyncio.to_thread(dropped_of, s.port)).items()}
    for s in services:
        await s.stop()
    replicas = []
    for r, name in enumerate(pids):
        applied = max(after[r] - before[r], 1.0)
        cpu_s = figures[f"{name}_us"] * figures["count"] / 1e6
        net_s = cpu_s - fixed[name] * figures["elapsed"]
        replicas.append(
            {"us": cpu_s / applied * 1e6, "net_us": net_s / applied * 1e6, "rate": applied / figures["elapsed"]}
        )
    gens_us = sum(figures[f"g{i}_us"] for i in range(len(gens)))
    run = {
        "setup": setup.name,
        "replicas": replicas,
        "fixed_ms": [fixed[name] * 1e3 for name in pids],
        "nats_us": figures["nats_us"],
        "gens_us": gens_us,
        "rate": figures["rate"],
        "late_s": max((r.get("late_s", 0.0) for r in results), default=0.0),
        "counts": counts,
        "reconnects": reconnects,
        "dropped": dropped,
        "load": load_average(),
    }
    print(round_line(run), flush=True)
    return run


async def test_partitions_cost(tmp_path: Path) -> None:
    server = NatsServer(
        state_dir=tmp_path / "nats", port=free_port(), extra_config=mapping_config(2), log_file=tmp_path / "nats.log"
    )
    server.start()
    assert server.process is not None
    a = Setup("A (1 replica, 2 partitions)", ["0,1"], tmp_path / "a")
    b = Setup("B (2 replicas, 1 partition each)", ["0", "1"], tmp_path / "b")
    loads = [load_average()]
    runs: list[dict[str, Any]] = []
    try:
        nc = await nats.connect(server.url)
        await ensure_streams(nc.jetstream())
        await approve(nc, cluster_ids(2 * CLUSTERS, PREFIX))
        events = await watch_node_health(nc, PREFIX)
        for setup in (a, b):
            await warm(server.url, setup, events)
            stage(f"{setup.name}: warmed up")
        loads.append(load_average())
        for _ in range(ROUNDS):
            for setup in (a, b):
                runs.append(await one_round(server.url, nc, setup, server.process.pid))
        loads.append(load_average())
        spurious = [e for e in events.changes if e.from_ is not None]
        await events.close()
        await nc.close()
    finally:
        await kill_started()
        server.stop()
    report(runs, loads, spurious)
    for run, setup in zip(runs, [a, b] * ROUNDS, strict=True):
        assert run["counts"] == {"ready": setup.nodes, "not_ready": 0, "unreachable": 0, "lost": 0}, run
        assert run["dropped"] == {}, run
    assert spurious == [], spurious[:5]


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f} (min {min(values):.2f}, max {max(values):.2f})"


def round_line(run: dict[str, Any]) -> str:
    replicas = ", ".join(
        f"{r['us']:.2f} µs/hb ({r['net_us']:.2f} net of fixed) at {r['rate']:,.0f}/s" for r in run["replicas"]
    )
    fixed = ", ".join(f"{ms:.1f}" for ms in run["fixed_ms"])
    return (
        f"  {run['setup'][0]}: replica {replicas}; fixed cost at rest {fixed} ms CPU/s; nats-server "
        f"{run['nats_us']:.2f} µs/hb; generators {run['gens_us']:.2f} µs/hb; generators late "
        f"{run['late_s']:.2f}s{behind(run)}; health {run['counts']}; bus reconnects {run['reconnects']} (the server "
        f"cut a replica off); load {run['load']}"
    )


def behind(run: dict[str, Any]) -> str:
    if run["late_s"] <= INTERVAL_S / 2:
        return ""
    return " (DID NOT keep their schedule: this round is at the rate they achieved)"


def report(runs: list[dict[str, Any]], loads: list[str], spurious: list[Any]) -> None:
    per_replica = CLUSTERS * NODES / INTERVAL_S
    print(
        f"\nheartbeat partitions: {CLUSTERS * NODES:,} nodes per replica every {INTERVAL_S:g}s = {per_replica:,.0f} "
        f"hb/s per replica (batches of {BATCH}, {GENERATORS} generator processes per replica's share); A and B "
        f"alternated {ROUNDS} times; loaded windows of {MEASURE_S:g}s, at-rest windows of {REST_S:g}s\n"
        f"  load average (1/5/15 min) at start, after warm-up, at end: {' | '.join(loads)}"
    )
    for run in runs:
        print(round_line(run))
    pairs = list(zip(runs[0::2], runs[1::2], strict=True))
    for key, label in (("us", "CPU per heartbeat"), ("net_us", "net of fixed cost")):
        one = [r["replicas"][0][key] for r, _ in pairs]
        two = [rep[key] for _, r in pairs for rep in r["replicas"]]
        ratios = [rep[key] / ra["replicas"][0][key] for ra, rb in pairs for rep in rb["replicas"]]
        print(
            f"  {label}: A {spread(one)} µs; B replicas {spread(two)} µs; B / A "
            f"{statistics.median(two) / statistics.median(one):.3f} of medians, each B replica against the A round "
            f"before it: {spread(ratios)}"
        )
    nats_a, nats_b = [r["nats_us"] for r, _ in pairs], [r["nats_us"] for _, r in pairs]
    gens = [rb["gens_us"] / ra["gens_us"] for ra, rb in pairs]  # the same work per heartbeat in A and B
    fixed_a = [ms for r, _ in pairs for ms in r["fixed_ms"]]
    fixed_b = [ms for _, r in pairs for ms in r["fixed_ms"]]
    print(
        f"  nats-server per heartbeat (the subject mapping included): A {spread(nats_a)} µs, B {spread(nats_b)} µs\n"
        f"  fixed cost at rest: A {spread(fixed_a)} ms CPU/s, B {spread(fixed_b)} ms CPU/s "
        f"(= {statistics.median(fixed_a) / per_replica * 1e3:.2f} µs per heartbeat at {per_replica:,.0f}/s)\n"
        f"  control (the machine, not partitions): the generators' CPU per heartbeat, the same work in both, B / A "
        f"{spread(gens)}\n"
        f"  {len(spurious)} spurious transitions; generators at most {max(r['late_s'] for r in runs):.2f}s late"
    )
