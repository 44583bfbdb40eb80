"""Upgrade-orchestrator at scale, as its own process with fake agents in this one.

1. Throughput: 1,000 clusters x 10 nodes, zero-duration steps: node upgrades/s (five steps each: cordon,
   drain, upgrade, verify, uncordon) from the start command to the rollout's Succeeded. Aim: 200/s or more.
2. Efficiency: 200 clusters x 10 nodes, 1 s steps, under the limits (max_concurrent_clusters 100,
   max_unavailable 3): ideal makespan (what the limits allow with instant decisions) / measured makespan.
   Aim: 0.9 or more.
Sizes scale with FLOTILLA_BENCH_SCALE. Run: pytest -m bench -s tests/bench/bench_orchestrator.py
"""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

import pytest
from bench_support import report, scale
from integration_support import start_service
from nats.aio.client import Client
from orchestrator_support import FakeAgents, publish_fleet
from registration_support import wait_until_serving

from flotilla_client.client import FlotillaClient
from flotilla_client.errors import ClientError
from flotilla_client.natsserver import NatsServer
from flotilla_contracts.subjects import Service
from flotilla_contracts.v1.upgrade import PlanReply, PlanRequest, RolloutSpec, StartRolloutReply, StartRolloutRequest
from flotilla_contracts.v1.upgrade_status import RolloutState, RolloutStatusReply, RolloutStatusRequest

pytestmark = pytest.mark.bench
UO = Service.UPGRADE_ORCHESTRATOR
STEPS = 5


async def _fleet_seen(client: FlotillaClient, spec: RolloutSpec, clusters: int) -> None:
    """Until the orchestrator has read the whole inventory from FLEET_EVENTS."""
    while True:
        try:
            plan = (await client.request(UO, "upgrade.plan", PlanRequest(spec=spec), PlanReply, timeout=30)).plan
            if plan.clusters_total >= clusters:
                return
        except ClientError as exc:
            if exc.code != "unavailable":
                raise
        await asyncio.sleep(0.5)


async def _run(
    nats_server: NatsServer,
    nc: Client,
    tmp_path: Path,
    clusters: int,
    nodes: int,
    spec: RolloutSpec,
    step_s: float,
) -> tuple[float, FakeAgents]:
    js = nc.jetstream()
    fleet = await publish_fleet(js, clusters=clusters, nodes=nodes)
    agents = FakeAgents(nc, fleet, max_unavailable=spec.max_unavailable, step_s=step_s)
    agents.start()
    process = start_service(UO, nats_server.url, tmp_path, tick_interval_s="0.5", intake_batch="1000")
    try:
        await wait_until_serving(nats_server.url, UO, within_s=60)
        async with FlotillaClient(nats_server.url) as client:
            await _fleet_seen(client, spec, clusters)
            started_at = time.perf_counter()
            started = await client.request(
                UO, "upgrade.start", StartRolloutRequest(request_id="bench", spec=spec), StartRolloutReply, timeout=60
            )
            while True:
                status = await client.request(
                    UO,
                    "upgrade.status",
                    RolloutStatusRequest(rollout_id=started.rollout_id, limit=1),
                    RolloutStatusReply,
                    timeout=30,
                )
                if status.rollout.state is RolloutState.SUCCEEDED:
                    break
                assert status.rollout.state is RolloutState.RUNNING, status.rollout
                await asyncio.sleep(0.25)
            assert status.rollout.finished_at is not None and status.rollout.started_at is not None
            elapsed = (status.rollout.finished_at - status.rollout.started_at).total_seconds()
            wall = time.perf_counter() - started_at
        assert agents.violations == []
        assert status.rollout.nodes.succeeded == clusters * nodes
        return max(elapsed, wall - 0.25), agents
    finally:
        await agents.stop()
        process.terminate()
        process.wait(30)


async def test_bench_node_upgrades_per_second(nats_server: NatsServer, nc: Client, tmp_path: Path) -> None:
    clusters, nodes = scale(1000), 10
    spec = RolloutSpec(
        target_version="v1.30.4",
        max_concurrent_clusters=clusters,
        max_unavailable=3,
        waves={"canary_clusters": 0},  # type: ignore[arg-type]
    )
    elapsed, agents = await _run(nats_server, nc, tmp_path, clusters, nodes, spec, step_s=0.0)
    total = clusters * nodes
    report(
        f"upgrade-orchestrator throughput: {clusters} clusters x {nodes} nodes, zero-duration steps",
        {
            "node upgrades": f"{total} ({total * STEPS} steps, {agents.executed} executed by agents)",
            "makespan": f"{elapsed:.1f} s",
            "node upgrades/s": f"{total / elapsed:.0f} (aim: 200 or more)",
            "steps/s": f"{total * STEPS / elapsed:.0f}",
        },
    )


async def test_bench_efficiency_under_limits(nats_server: NatsServer, nc: Client, tmp_path: Path) -> None:
    clusters, nodes, step_s = scale(200), 10, 1.0
    concurrent, unavailable = max(1, clusters // 2), 3
    spec = RolloutSpec(
        target_version="v1.30.4",
        max_concurrent_clusters=concurrent,
        max_unavailable=unavailable,
        waves={"canary_clusters": 0},  # type: ignore[arg-type]
    )
    elapsed, _ = await _run(nats_server, nc, tmp_path, clusters, nodes, spec, step_s=step_s)
    # One control-plane node alone, then the workers `unavailable` at a time; clusters `concurrent` at a time.
    per_cluster = (1 + math.ceil((nodes - 1) / unavailable)) * STEPS * step_s
    ideal = math.ceil(clusters / concurrent) * per_cluster
    report(
        f"upgrade-orchestrator efficiency: {clusters} clusters x {nodes} nodes, {step_s:.0f} s steps",
        {
            "limits": f"max_concurrent_clusters {concurrent}, max_unavailable {unavailable}",
            "ideal makespan": f"{ideal:.1f} s",
            "measured makespan": f"{elapsed:.1f} s",
            "efficiency": f"{ideal / elapsed:.2f} (aim: 0.9 or more)",
        },
    )
