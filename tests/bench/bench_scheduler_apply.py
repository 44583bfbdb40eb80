"""`subscriptions apply` through the scheduler service: 10,000 subscriptions over 5,000 clusters, two ways side
by side, each on a fresh scheduler process:
- single: one `subscriptions.apply` per subscription, pipelined from one connection (200 in flight, so the
  service, not the client, is what it measures);
- batch: `subscriptions.batch.apply` as `flotilla subscriptions apply -f FOLDER` sends it (the CLI's own
  `batches`: up to 500 specs and ~224 KiB a request, BATCHES_IN_FLIGHT = 4 at once).

The scheduler runs as its own process on a real nats-server; its read model learns the clusters from
`ClusterApproved` events in FLEET_EVENTS, as in production. Prints applies/s and its ratio to raw nats-py
request/reply (an echo responder in another process, one subscription's payload, 200 in flight) measured in
the same run, request latency p50/p99, the CPU each apply cost the scheduler process and nats-server (from
/proc, so it holds on a loaded machine), how long the outbox took to publish what the applies caused, the
load average, and (after the batch path) `subscriptions list` of all 10,000 page by page against the size one
reply would have had. Run: `.venv/bin/pytest -m bench -s tests/bench/bench_scheduler_apply.py`. Sizes:
BENCH_SCHED_CLUSTERS (5000), BENCH_SCHED_SUBSCRIPTIONS (10000), BENCH_SCHED_IN_FLIGHT (200, single path),
BENCH_SCHED_PATHS ("single,batch"). BENCH_SCHED_PROFILE=DIR: py-spy (on PATH) records the scheduler from
each path's first apply until its outbox published them, into DIR/<path>.txt (collapsed stacks).
Assertions are about correctness only (every apply created, every subscription announced, every page listed).
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec
import pytest
from bench_scheduler import CLUSTERS, MANIFEST, SUBSCRIPTIONS, labels, policy
from bench_support import cpu_seconds, ms, percentile, pipelined, raw_request_rate, report
from integration_support import start_service
from nats.js import JetStreamContext
from registration_support import wait_until_serving
from scheduler_support import approved

from flotilla_client.cli.subscriptions import BATCHES_IN_FLIGHT, LIST_PAGE, batches
from flotilla_client.client import FlotillaClient
from flotilla_client.natsserver import NatsServer
from flotilla_contracts import catalogue
from flotilla_contracts.envelope import H_MSG_ID, H_SCHEMA, schema_id
from flotilla_contracts.streams import FLEET_EVENTS
from flotilla_contracts.subjects import Service, command
from flotilla_contracts.v1 import scheduler as sched
from flotilla_contracts.v1.registration_events import ClusterApproved
from flotilla_contracts.v1.scheduler_events import SubscriptionApplied
from flotilla_testkit import eventually

pytestmark = [pytest.mark.bench, pytest.mark.timeout(1800)]  # the single path took minutes on a loaded machine
SCHED = Service.SCHEDULER
IN_FLIGHT = int(os.environ.get("BENCH_SCHED_IN_FLIGHT", "200"))
PATHS = [p.strip() for p in os.environ.get("BENCH_SCHED_PATHS", "single,batch").split(",") if p.strip()]
PROFILE = os.environ.get("BENCH_SCHED_PROFILE", "")
NATS_MAX_PAYLOAD = 1024 * 1024


async def publish_fleet(js: JetStreamContext, clusters: int) -> None:
    """Every cluster Approved, as registration announces it; 200 publishes in flight."""
    schema = schema_id(ClusterApproved)

    async def one(i: int) -> float:
        cid = f"c{i:05d}"
        body = msgspec.json.encode(approved(cid, **labels(i)))
        headers = {H_SCHEMA: schema, H_MSG_ID: uuid.uuid4().hex}
        await js.publish(catalogue.subject_for(ClusterApproved, cluster_id=cid), body, headers=headers)
        return 0.0

    await pipelined(clusters, 200, one)


async def scheduler_caught_up(js: JetStreamContext) -> bool:
    """The scheduler's durable consumers of FLEET_EVENTS have nothing pending and nothing unacked."""
    consumers = [c for c in await js.consumers_info(FLEET_EVENTS.name) if c.name.startswith(f"{SCHED.value}-")]
    return bool(consumers) and all(not c.num_pending and not c.num_ack_pending for c in consumers)


async def announced(js: JetStreamContext) -> int:
    """SubscriptionApplied events stored in FLEET_EVENTS (the outbox relay published them)."""
    subject = catalogue.operation_for(SubscriptionApplied).filter
    info = await js.stream_info(FLEET_EVENTS.name, subjects_filter=subject)
    return sum((info.state.subjects or {}).values())


Applier = Callable[[FlotillaClient], Awaitable[tuple[float, list[float], list[sched.ApplyResult]]]]


def single_path(specs: list[sched.SubscriptionSpec]) -> Applier:
    """One request per subscription, IN_FLIGHT at a time; each reply as the batch's result shape."""
    subject = command(SCHED, "subscriptions.apply")
    headers = {H_SCHEMA: schema_id(sched.ApplySubscriptionRequest)}
    bodies = [msgspec.json.encode(sched.ApplySubscriptionRequest(spec=spec)) for spec in specs]
    decode = msgspec.json.Decoder(dict[str, object])

    async def run(client: FlotillaClient) -> tuple[float, list[float], list[sched.ApplyResult]]:
        results: list[sched.ApplyResult] = []

        async def one(j: int) -> float:
            sent = time.perf_counter()
            reply = await client.nc.request(subject, bodies[j], headers=headers, timeout=60)
            answer = decode.decode(reply.data)
            assert answer.get("ok"), reply.data[:300]
            data = msgspec.convert(answer["data"], sched.ApplySubscriptionReply)
            outcome = sched.ApplyOutcome.APPLIED if data.changed else sched.ApplyOutcome.UNCHANGED
            results.append(sched.ApplyResult(name=data.name, outcome=outcome, created=data.created))
            return time.perf_counter() - sent

        elapsed, latencies = await pipelined(len(bodies), IN_FLIGHT, one)
        return elapsed, latencies, results

    return run


def batch_path(specs: list[sched.SubscriptionSpec]) -> Applier:
    """As `flotilla subscriptions apply -f FOLDER` sends them: the CLI's batches, BATCHES_IN_FLIGHT at a time."""
    parts = batches(specs)

    async def run(client: FlotillaClient) -> tuple[float, list[float], list[sched.ApplyResult]]:
        answered: list[list[sched.ApplyResult]] = [[] for _ in parts]

        async def one(i: int) -> float:
            sent = time.perf_counter()
            answered[i] = await client.apply_subscriptions(parts[i], timeout=120)
            return time.perf_counter() - sent

        elapsed, latencies = await pipelined(len(parts), BATCHES_IN_FLIGHT, one)
        return elapsed, latencies, [r for results in answered for r in results]

    return run


def profiler(pid: int, path: str) -> subprocess.Popen[bytes] | None:
    """py-spy recording `pid` until stopped (SIGINT), when BENCH_SCHED_PROFILE names a folder."""
    spy = shutil.which("py-spy")
    if not PROFILE or spy is None:
        return None
    out = Path(PROFILE) / f"{path}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = [spy, "record", "-p", str(pid), "-f", "raw", "-o", str(out), "-r", "200", "--nonblocking"]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def list_every_page(client: FlotillaClient) -> tuple[float, int, int, int]:
    """`subscriptions list` as the CLI reads it: (seconds, pages, subscriptions, bytes all of them take)."""
    started = time.perf_counter()
    found: list[sched.SubscriptionSummary] = []
    cursor, pages = "", 0
    while True:
        request = sched.ListSubscriptionsRequest(limit=LIST_PAGE, cursor=cursor)
        page = await client.request(SCHED, "subscriptions.list", request, sched.ListSubscriptionsReply, 30)
        found += page.subscriptions
        pages += 1
        if not page.next_cursor:
            break
        cursor = page.next_cursor
    elapsed = time.perf_counter() - started
    one_reply = len(msgspec.json.encode(sched.ListSubscriptionsReply(subscriptions=found, total=len(found))))
    return elapsed, pages, len(found), one_reply


async def test_subscriptions_apply_rate_through_the_service(nats_server: NatsServer, tmp_path: Path) -> None:
    rng = random.Random(7)
    specs = [
        sched.SubscriptionSpec(name=f"s{j:05d}", manifests=[MANIFEST], policy=policy(j, rng))
        for j in range(SUBSCRIPTIONS)
    ]
    appliers = {"single": single_path(specs), "batch": batch_path(specs)}
    assert nats_server.process is not None
    figures: dict[str, str] = {}
    rates: dict[str, float] = {}
    async with FlotillaClient(nats_server.url) as client:
        js = client.nc.jetstream()
        body = msgspec.json.encode(sched.ApplySubscriptionRequest(spec=specs[0]))
        raw_rate = await raw_request_rate(nats_server.url, body, 80, SUBSCRIPTIONS, IN_FLIGHT)
        figures["raw nats-py request/reply/s (one subscription's payload)"] = f"{raw_rate:,.0f}"
        for path in PATHS:
            process = start_service(SCHED, nats_server.url, tmp_path / path)
            try:
                await wait_until_serving(nats_server.url, SCHED)  # the first one creates the streams
                started = time.perf_counter()
                if path == PATHS[0]:
                    await publish_fleet(js, CLUSTERS)
                await eventually(
                    lambda: scheduler_caught_up(js), "the scheduler read every ClusterApproved", timeout_s=300,
                    every_s=0.2, until=bool,
                )  # fmt: skip
                fleet_s = time.perf_counter() - started
                announced_before = await announced(js)
                pids = {"scheduler": process.pid, "nats-server": nats_server.process.pid}
                load_before = os.getloadavg()[0]
                cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
                spy = profiler(process.pid, path)
                elapsed, latencies, results = await appliers[path](client)
                load_after = os.getloadavg()[0]
                cpu = {name: (cpu_seconds(pid) - cpu_before[name]) / SUBSCRIPTIONS * 1e6 for name, pid in pids.items()}
                assert len(results) == SUBSCRIPTIONS and all(r.created for r in results), results[:3]
                started = time.perf_counter()
                await eventually(
                    lambda: announced(js), f"{SUBSCRIPTIONS} SubscriptionApplied events published", timeout_s=600,
                    every_s=0.5, until=lambda n, want=announced_before + SUBSCRIPTIONS: n >= want,
                )  # fmt: skip
                published_s = time.perf_counter() - started
                if spy is not None:  # the profile covers the applies and the relay publishing what they caused
                    spy.send_signal(2)
                    await asyncio.to_thread(spy.wait, 60)
                cpu_all = {
                    name: (cpu_seconds(pid) - cpu_before[name]) / SUBSCRIPTIONS * 1e6 for name, pid in pids.items()
                }
                rates[path] = SUBSCRIPTIONS / elapsed
                unit = "request" if path == "single" else f"batch of ~{SUBSCRIPTIONS // len(latencies)}"
                ratio = rates[path] / raw_rate
                figures |= {
                    f"{path}: applies/s": f"{rates[path]:,.0f} ({elapsed:.2f} s; ratio to raw {ratio:.3f})",
                    f"{path}: latency per {unit} p50 / p99": f"{ms(percentile(latencies, 0.5))} / "
                    f"{ms(percentile(latencies, 0.99))}",
                    f"{path}: CPU per apply while applying": ", ".join(f"{n} {us:,.0f} µs" for n, us in cpu.items())
                    + " (the outbox relay's publishing included, as far as it kept up)",
                    f"{path}: CPU per apply until the last SubscriptionApplied was published": ", ".join(
                        f"{n} {us:,.0f} µs" for n, us in cpu_all.items()
                    ),
                    f"{path}: applies/s the scheduler would sustain on a core of its own (1 s / CPU per apply, relay "
                    "included)": f"{1e6 / cpu_all['scheduler']:,.0f}",
                    f"{path}: outbox, every SubscriptionApplied published": f"{published_s:.1f} s after the last reply",
                    f"{path}: fleet read (ClusterApproved events)": f"{fleet_s:.1f} s ({CLUSTERS / fleet_s:,.0f}/s)",
                    f"{path}: load average (1 min) before / after": f"{load_before:.2f} / {load_after:.2f}",
                }
                if path == "batch":
                    took, pages, listed, one_reply = await list_every_page(client)
                    assert listed == SUBSCRIPTIONS
                    over = "over" if one_reply > NATS_MAX_PAYLOAD else "under"
                    figures["subscriptions list, every page"] = (
                        f"{listed:,} in {pages} pages of {LIST_PAGE:,}, {took:.2f} s; in one reply they would take "
                        f"{one_reply / 2**20:.2f} MiB ({over} NATS's 1 MiB max payload)"
                    )
            finally:
                process.terminate()
                await asyncio.to_thread(process.wait, 30)
    if "single" in rates and "batch" in rates:
        figures["batch / single applies/s"] = f"{rates['batch'] / rates['single']:.2f}x"
    report(f"subscriptions apply through the service: {SUBSCRIPTIONS:,} over {CLUSTERS:,} clusters", figures)
