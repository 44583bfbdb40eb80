"""`subscriptions apply` through the scheduler service: 10,000 subscriptions over 5,000 clusters, requests
pipelined from one connection as `flotilla subscriptions apply -f FOLDER` sends its files (it keeps 64 in
flight; the benchmark 200, so the service, not the client, is what it measures).

The scheduler runs as its own process on a real nats-server; its read model learns the clusters from
`ClusterApproved` events in FLEET_EVENTS, as in production. Prints applies/s and its ratio to raw nats-py
request/reply (an echo responder in another process, same payload, same requests in flight) measured in
the same run, apply latency p50/p99, the CPU each apply cost the scheduler process and nats-server (from
/proc, so it holds on a loaded machine), how long the outbox took to publish what the applies caused, and
the load average. Run: `.venv/bin/pytest -m bench -s tests/bench/bench_scheduler_apply.py`. Sizes:
BENCH_SCHED_CLUSTERS (5000), BENCH_SCHED_SUBSCRIPTIONS (10000), BENCH_SCHED_IN_FLIGHT (200).
Assertions are about correctness only (every apply created, every subscription announced).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from pathlib import Path

import msgspec
import pytest
from bench_scheduler import CLUSTERS, MANIFEST, SUBSCRIPTIONS, labels, policy
from bench_support import ms, percentile, pipelined, raw_request_rate, report
from integration_support import start_service
from nats.js import JetStreamContext
from registration_support import wait_until_serving
from scheduler_support import approved

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

pytestmark = [pytest.mark.bench, pytest.mark.timeout(1200)]  # the old path took minutes on a loaded machine
SCHED = Service.SCHEDULER
IN_FLIGHT = int(os.environ.get("BENCH_SCHED_IN_FLIGHT", "200"))


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


async def test_subscriptions_apply_rate_through_the_service(nats_server: NatsServer, tmp_path: Path) -> None:
    rng = random.Random(7)
    bodies = [
        msgspec.json.encode(
            sched.ApplySubscriptionRequest(
                spec=sched.SubscriptionSpec(name=f"s{j:05d}", manifests=[MANIFEST], policy=policy(j, rng))
            )
        )
        for j in range(SUBSCRIPTIONS)
    ]
    process = start_service(SCHED, nats_server.url, tmp_path)
    try:
        await wait_until_serving(nats_server.url, SCHED)
        async with FlotillaClient(nats_server.url) as client:
            js = client.nc.jetstream()
            started = time.perf_counter()
            await publish_fleet(js, CLUSTERS)
            await eventually(
                lambda: scheduler_caught_up(js), "the scheduler read every ClusterApproved", timeout_s=300,
                every_s=0.2, until=bool,
            )  # fmt: skip
            fleet_s = time.perf_counter() - started
            raw_rate = await raw_request_rate(nats_server.url, bodies[0], 80, SUBSCRIPTIONS, IN_FLIGHT)
            subject = command(SCHED, "subscriptions.apply")
            headers = {H_SCHEMA: schema_id(sched.ApplySubscriptionRequest)}
            replies: list[sched.ApplySubscriptionReply] = []
            decode = msgspec.json.Decoder(dict[str, object])
            load_before = os.getloadavg()[0]
            assert nats_server.process is not None
            pids = {"scheduler": process.pid, "nats-server": nats_server.process.pid}
            cpu_before = {name: cpu_s(pid) for name, pid in pids.items()}

            async def one(j: int) -> float:
                sent = time.perf_counter()
                reply = await client.nc.request(subject, bodies[j], headers=headers, timeout=60)
                answer = decode.decode(reply.data)
                assert answer.get("ok"), reply.data[:300]
                replies.append(msgspec.convert(answer["data"], sched.ApplySubscriptionReply))
                return time.perf_counter() - sent

            elapsed, latencies = await pipelined(SUBSCRIPTIONS, IN_FLIGHT, one)
            load_after = os.getloadavg()[0]
            cpu = {name: (cpu_s(pid) - cpu_before[name]) / SUBSCRIPTIONS * 1e6 for name, pid in pids.items()}
            apply_rate = SUBSCRIPTIONS / elapsed
            assert len(replies) == SUBSCRIPTIONS and all(r.created for r in replies)
            started = time.perf_counter()
            await eventually(
                lambda: announced(js), f"{SUBSCRIPTIONS} SubscriptionApplied events published", timeout_s=600,
                every_s=0.5, until=lambda n: n >= SUBSCRIPTIONS,
            )  # fmt: skip
            published_s = time.perf_counter() - started
    finally:
        process.terminate()
        await asyncio.to_thread(process.wait, 30)
    report(
        f"subscriptions apply through the service: {SUBSCRIPTIONS:,} over {CLUSTERS:,} clusters, {IN_FLIGHT} in flight",
        {
            "applies/s": f"{apply_rate:,.0f} ({elapsed:.2f} s)",
            "raw nats-py request/reply/s": f"{raw_rate:,.0f}",
            "ratio to raw": f"{apply_rate / raw_rate:.3f}",
            "apply latency p50": ms(percentile(latencies, 0.50)),
            "apply latency p99": ms(percentile(latencies, 0.99)),
            "CPU per apply while applying": ", ".join(f"{name} {us:,.0f} µs" for name, us in cpu.items())
            + " (the outbox relay's publishing included, as far as it kept up)",
            "fleet read (ClusterApproved events)": f"{fleet_s:.1f} s ({CLUSTERS / fleet_s:,.0f} clusters/s)",
            "outbox: every SubscriptionApplied published": f"{published_s:.1f} s after the last reply",
            "load average (1 min) before / after the applies": f"{load_before:.2f} / {load_after:.2f}",
        },
    )
