"""Registration at scale: 10,000 clusters x 5 nodes joining with 200 in flight, then listing them.

Prints joins/s and its ratio to raw nats-py request/reply measured in the same run, join latency
p50/p99, and `clusters.list` latency at full size. Run: make bench (or pytest -m bench -s tests/bench).
"""

from __future__ import annotations

import time
from pathlib import Path

import msgspec
import pytest
from bench_support import median, ms, percentile, pipelined, raw_request_rate, report, scale
from integration_support import start_service
from registration_support import join_request, read_stream, wait_until_serving

from flotilla_client.client import FlotillaClient
from flotilla_client.natsserver import NatsServer
from flotilla_contracts.streams import FLEET_EVENTS
from flotilla_contracts.subjects import Service
from flotilla_contracts.v1 import registration as reg
from flotilla_runtime import codec
from flotilla_testkit import eventually

pytestmark = pytest.mark.bench
REG = Service.REGISTRATION


async def test_bench_registration(nats_server: NatsServer, tmp_path: Path) -> None:
    clusters, in_flight = scale(10_000), 200
    process = start_service(REG, nats_server.url, tmp_path)
    try:
        await wait_until_serving(nats_server.url, REG)
        async with FlotillaClient(nats_server.url) as client:
            token = (
                await client.request(
                    REG, "tokens.create", reg.CreateTokenRequest(auto_approve=True), reg.CreateTokenReply
                )
            ).token
            bodies = [codec.encode(join_request(token, f"c{i:05d}", nodes=5)) for i in range(clusters)]
            sample_reply = (
                len(b'{"ok":true,"data":{"cluster_id":"c00000-abcdef","state":"Approved","credential":"') + 120
            )
            raw_rate = await raw_request_rate(
                nats_server.url, bodies[0], sample_reply, min(clusters, 20_000), in_flight
            )
            subject = "fleet.v1.cmd.registration.join"
            headers = {"Flotilla-Schema": "registration.JoinRequest/v1"}

            async def one(i: int) -> float:
                started = time.perf_counter()
                reply = await client.nc.request(subject, bodies[i], headers=headers, timeout=30)
                assert msgspec.json.decode(reply.data)["ok"], reply.data[:300]
                return time.perf_counter() - started

            elapsed, latencies = await pipelined(clusters, in_flight, one)
            join_rate = clusters / elapsed

            list_times, selected = [], 0
            for selector in ("", "env=test", "env in (test,prod),!gpu"):
                started = time.perf_counter()
                cursor, selected = "", 0
                while True:
                    page = await client.request(
                        REG,
                        "clusters.list",
                        reg.ListClustersRequest(selector=selector, cursor=cursor),
                        reg.ListClustersReply,
                        timeout=30,
                    )
                    selected += len(page.clusters)
                    if not page.next_cursor:
                        break
                    cursor = page.next_cursor
                list_times.append(time.perf_counter() - started)
                assert selected == clusters
            started = time.perf_counter()
            first_page = await client.request(
                REG, "clusters.list", reg.ListClustersRequest(selector="env=test", limit=100), reg.ListClustersReply
            )
            first_page_time = time.perf_counter() - started
            assert first_page.total == clusters

        # Every join committed and its events published (1 join-requested + 1 approved + 5 nodes).
        expected_events = 1 + clusters * 7
        async with FlotillaClient(nats_server.url) as client:
            js = client.nc.jetstream()

            async def stored() -> int:
                return (await js.stream_info(FLEET_EVENTS.name)).state.messages

            await eventually(
                stored, f"{expected_events} events published", timeout_s=120, every_s=0.2,
                until=lambda n: n >= expected_events,
            )  # fmt: skip
            published_after = time.perf_counter() - started
            view = await read_stream(client.nc) if clusters <= 2_000 else None
    finally:
        process.terminate()
        process.wait(30)
    if view is not None:
        assert not view.duplicated_ids()
    report(
        f"registration: {clusters} clusters x 5 nodes, {in_flight} joins in flight",
        {
            "joins/s": f"{join_rate:,.0f}",
            "raw nats-py request/reply/s": f"{raw_rate:,.0f}",
            "ratio to raw": f"{join_rate / raw_rate:.2f}",
            "join latency p50": ms(percentile(latencies, 0.50)),
            "join latency p99": ms(percentile(latencies, 0.99)),
            "clusters.list all pages (median of 3 selectors)": ms(median(list_times)),
            "clusters.list -l env=test first page of 100": ms(first_page_time),
            "events in FLEET_EVENTS": f"{expected_events:,} (all published {published_after:.1f}s after the last list)",
        },
    )
