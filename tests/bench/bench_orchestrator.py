"""Upgrade-orchestrator at scale, as its own process with fake agents in this one.

1. Throughput: 1,000 clusters x 10 nodes, zero-duration steps: node upgrades/s (five steps each: cordon,
   drain, upgrade, verify, uncordon) from the start command to the rollout's Succeeded. Aim: 200/s or more.
2. Efficiency: 200 clusters x 10 nodes, 1 s steps, under the limits (max_concurrent_clusters 100,
   max_unavailable 3): ideal makespan (what the limits allow with instant decisions) / measured makespan.
   Aim: 0.9 or more.
3. Failover: the process holding a rollout's lease is SIGKILLed mid-rollout; seconds from the kill to the
   first NodeStepCommand at the new epoch, (a) by a second process already running on the same state folder
   (its own instance id: it waits for the lease to expire), (b) by a replacement started after the kill with
   the same fixed instance id (takes the lease at once), (c) by a replacement with a new instance id. Printed
   in seconds with the lease settings that bound them (no baseline ratio: the bound is the TTL).
Sizes scale with FLOTILLA_BENCH_SCALE. Run: pytest -m bench -s tests/bench/bench_orchestrator.py
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import time
from pathlib import Path

import msgspec
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
from flotilla_contracts.v1.agent import NodeStepCommand
from flotilla_contracts.v1.upgrade import PlanReply, PlanRequest, RolloutSpec, StartRolloutReply, StartRolloutRequest
from flotilla_contracts.v1.upgrade_status import RolloutState, RolloutStatusReply, RolloutStatusRequest
from flotilla_testkit import eventually

pytestmark = pytest.mark.bench
UO = Service.UPGRADE_ORCHESTRATOR
STEPS = 5


async def _fleet_seen(client: FlotillaClient, spec: RolloutSpec, clusters: int) -> None:
    """Until the orchestrator has read the whole inventory from FLEET_EVENTS."""

    async def planned() -> int:
        try:
            return (
                await client.request(UO, "upgrade.plan", PlanRequest(spec=spec), PlanReply, timeout=30)
            ).plan.clusters_total
        except ClientError as exc:
            if exc.code != "unavailable":
                raise
            return 0

    await eventually(
        planned, f"a plan over {clusters} clusters", timeout_s=300, every_s=0.5, until=lambda n: n >= clusters
    )


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

            async def running() -> RolloutStatusReply:
                reply = await client.request(
                    UO,
                    "upgrade.status",
                    RolloutStatusRequest(rollout_id=started.rollout_id, limit=1),
                    RolloutStatusReply,
                    timeout=30,
                )
                assert reply.rollout.state in (RolloutState.RUNNING, RolloutState.SUCCEEDED), reply.rollout
                return reply

            status = await eventually(
                running,
                "the benchmark rollout to succeed",
                timeout_s=3600,
                every_s=0.25,
                until=lambda reply: reply.rollout.state is RolloutState.SUCCEEDED,
            )
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


FAILOVER = {"tick_interval_s": "0.2", "lease_ttl_s": "3", "intake_batch": "256"}


async def _failover(
    nats_server: NatsServer, nc: Client, tmp_path: Path, case: str, prefix: str
) -> tuple[float, int, int]:
    """One kill of the lease holder; (seconds to the first command at a newer epoch, epoch before, after)."""
    js = nc.jetstream()
    fleet = await publish_fleet(js, clusters=4, nodes=5, prefix=prefix)
    agents = FakeAgents(nc, fleet, max_unavailable=1, step_s=0.3)
    agents.start()
    seen: list[tuple[float, int]] = []

    async def on_command(msg: object) -> None:
        command = msgspec.json.decode(msg.data, type=NodeStepCommand)  # type: ignore[attr-defined]
        if command.cluster_id.startswith(prefix):
            seen.append((time.monotonic(), command.epoch))

    sub = await nc.subscribe("fleet.v1.agent.*.*.step", cb=on_command)
    state = tmp_path / case.replace(" ", "-")
    old = start_service(UO, nats_server.url, state, instance_id=f"{prefix}-old", **FAILOVER)
    processes: list[subprocess.Popen[bytes]] = [old]
    try:
        await wait_until_serving(nats_server.url, UO, within_s=60)
        if case == "warm survivor":  # started once the first one has made the state file
            processes.append(start_service(UO, nats_server.url, state, instance_id="warm-b", **FAILOVER))
        spec = RolloutSpec(target_version="v1.30.4", max_concurrent_clusters=1, max_unavailable=1)
        async with FlotillaClient(nats_server.url) as client:
            await _fleet_seen(client, spec, 4)
            started = await client.request(
                UO, "upgrade.start", StartRolloutRequest(request_id=prefix, spec=spec), StartRolloutReply, timeout=60
            )
        await eventually(lambda: len(seen) >= 8, f"{case}: 8 commands", timeout_s=60)
        kv = await js.key_value("upgrade_orchestrator_leases")
        lease = msgspec.json.decode((await kv.get(f"rollout.{started.rollout_id}")).value or b"{}")
        before = int(lease["epoch"])
        holder = old if lease["owner"] == f"{prefix}-old" else processes[-1]
        killed = time.monotonic()
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        if case == "fixed instance id":
            processes.append(start_service(UO, nats_server.url, state, instance_id=f"{prefix}-old", **FAILOVER))
        elif case == "new instance id":
            processes.append(start_service(UO, nats_server.url, state, instance_id=f"{prefix}-new", **FAILOVER))
        await eventually(
            lambda: any(at >= killed and epoch > before for at, epoch in seen),
            f"{case}: a command at an epoch above {before}",
            timeout_s=60,
            every_s=0.01,  # the takeover time is the figure: look often
        )
        at, after = next((at, epoch) for at, epoch in seen if at >= killed and epoch > before)
        return at - killed, before, after
    finally:
        await sub.unsubscribe()
        await agents.stop()
        for process in processes:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    print(f"  ({case}: pid {process.pid} still stopping after 20 s of SIGTERM; killed)")
                    process.kill()
                    process.wait(10)


async def test_bench_failover(nats_server: NatsServer, nc: Client, tmp_path: Path) -> None:
    figures = {}
    for n, case in enumerate(("warm survivor", "fixed instance id", "new instance id")):
        took, before, after = await _failover(nats_server, nc, tmp_path, case, prefix=f"f{n}x")
        figures[f"{case}"] = f"{took:.2f} s (epoch {before} -> {after})"
        print(f"  {case}: {figures[case]}")
    ttl, tick = float(FAILOVER["lease_ttl_s"]), float(FAILOVER["tick_interval_s"])
    figures["lease settings"] = (
        f"LEASE_TTL_S {ttl:g} (renewed every {ttl / 3:g} s), TICK_INTERVAL_S {tick:g}; bound for a process with "
        f"another instance id: TTL + TTL/3 = {ttl * 4 / 3:g} s; with the same id: a process start "
        f"({os.cpu_count()} cpus)"
    )
    report("upgrade-orchestrator failover: SIGKILL of the lease holder to the first command at the new epoch", figures)
