"""The upgrade-orchestrator as its own process on a real nats-server, with fake agents and synthetic
registration and heartbeat events: rollouts complete with every invariant checked from the event log,
and SIGKILLs at random points neither repeat a step nor stop the rollout."""

from __future__ import annotations

import asyncio
import os
import random
import signal
from pathlib import Path

import pytest
from integration_support import service_log, start_service
from nats.aio.client import Client
from orchestrator_support import EventLog, FakeAgents, cluster_health, publish_fleet
from registration_support import wait_until_serving

from flotilla_client.client import FlotillaClient
from flotilla_client.natsserver import NatsServer
from flotilla_contracts.subjects import Service
from flotilla_contracts.v1.heartbeat import ClusterHealth
from flotilla_contracts.v1.upgrade import (
    PlanReply,
    PlanRequest,
    RetryRequest,
    RolloutSpec,
    StartRolloutReply,
    StartRolloutRequest,
    WavesSpec,
)
from flotilla_contracts.v1.upgrade_status import (
    RolloutReply,
    RolloutState,
    RolloutStatusReply,
    RolloutStatusRequest,
)
from flotilla_testkit import eventually

pytestmark = pytest.mark.integration
UO = Service.UPGRADE_ORCHESTRATOR
FAST = {"tick_interval_s": "0.2", "lease_ttl_s": "2", "intake_batch": "256"}


async def plan_sees(client: FlotillaClient, spec: RolloutSpec, clusters: int, within_s: float = 20.0) -> None:
    """Until the orchestrator's read model holds the fleet we published (it reads FLEET_EVENTS)."""

    async def planned() -> int:
        return (await client.request(UO, "upgrade.plan", PlanRequest(spec=spec), PlanReply)).plan.clusters_total

    # Exception: the orchestrator is still starting (no responders, a timeout).
    await eventually(
        planned,
        f"a plan over {clusters} clusters",
        timeout_s=within_s,
        every_s=0.2,
        retrying=(Exception,),
        until=lambda total: total == clusters,
    )


async def wait_for(
    client: FlotillaClient, rollout_id: str, states: set[RolloutState], within_s: float = 60.0
) -> RolloutStatusReply:
    async def status() -> RolloutStatusReply:
        request = RolloutStatusRequest(rollout_id=rollout_id, include_nodes=True)
        return await client.request(UO, "upgrade.status", request, RolloutStatusReply)

    # Exception: the orchestrator is restarting (no responders, a timeout).
    return await eventually(
        status,
        f"rollout {rollout_id} in {sorted(s.value for s in states)}",
        timeout_s=within_s,
        every_s=0.2,
        retrying=(Exception,),
        until=lambda reply: reply.rollout.state in states,
    )


async def test_a_rollout_freezes_on_a_failing_node_then_retry_completes_it(
    nats_server: NatsServer, nc: Client, tmp_path: Path
) -> None:
    js = nc.jetstream()
    nodes = await publish_fleet(js, clusters=5, nodes=4, cps=2)
    nodes[("c0002", "c0002-n03")].fail = {"upgrade"}
    # Bad input on a subject the orchestrator reads: dead-lettered, never blocks what follows.
    await js.publish(
        "fleet.v1.evt.node-step.c0000.c0000-n00.reported",
        b"{not json",
        headers={"Flotilla-Schema": "agent.NodeStepReported/v1", "Nats-Msg-Id": "garbage-1"},
    )
    agents = FakeAgents(nc, nodes, max_unavailable=2)
    agents.start()
    process = start_service(UO, nats_server.url, tmp_path, **FAST)
    try:
        await wait_until_serving(nats_server.url, UO)
        spec = RolloutSpec(
            target_version="v1.30.4",
            waves=WavesSpec(canary_clusters=1, percentages=[50, 100]),
            max_unavailable=2,
            max_concurrent_clusters=2,
        )
        async with FlotillaClient(nats_server.url) as client:
            await plan_sees(client, spec, clusters=5)
            await cluster_health(js, "c0004", ClusterHealth.READY)
            started = await client.request(
                UO, "upgrade.start", StartRolloutRequest(request_id="t1", spec=spec), StartRolloutReply
            )
            frozen = await wait_for(client, started.rollout_id, {RolloutState.FROZEN})
            assert frozen.rollout.freeze is not None
            assert frozen.rollout.freeze.reason.value == "NodeFailureBudgetExceeded"
            assert "c0002/c0002-n03" in frozen.rollout.freeze.message
            assert any(f.node_id == "c0002-n03" and f.reason == "InjectedFailure" for f in frozen.failures)
            nodes[("c0002", "c0002-n03")].fail = set()
            retried = await client.request(
                UO, "upgrade.retry", RetryRequest(rollout_id=started.rollout_id), RolloutReply
            )
            assert "retrying 1 cluster(s) (c0002)" in retried.message
            done = await wait_for(client, started.rollout_id, {RolloutState.SUCCEEDED})
        assert done.rollout.nodes.succeeded == 20 and done.rollout.clusters.succeeded == 5
        assert all(n.version == "v1.30.4" and not n.cordoned_by for n in nodes.values())
        assert agents.violations == []
        log = EventLog.read
        events = await log(nc)
        assert events.violations(max_unavailable=2, max_clusters=2) == []
        assert len(events.of("upgrade.RolloutFrozen/v1")) == 1 and len(events.of("upgrade.RolloutUnfrozen/v1")) == 1
        assert [w["to"] for w in events.of("upgrade.WaveStateChanged/v1")].count("Succeeded") == 3
        dead = await js.get_last_msg("FLEET_EVENTS", "fleet.v1.evt.dead-letter.upgrade-orchestrator.recorded")
        assert b"does not decode" in dead.data
    finally:
        await agents.stop()
        process.terminate()
        process.wait(15)
    assert process.returncode == 0, service_log(tmp_path, UO)


async def test_sigkill_at_random_points_repeats_no_step_and_the_rollout_completes(
    nats_server: NatsServer, nc: Client, tmp_path: Path
) -> None:
    js = nc.jetstream()
    nodes = await publish_fleet(js, clusters=6, nodes=5, cps=1)
    agents = FakeAgents(nc, nodes, max_unavailable=2, step_s=0.25)
    agents.start()
    rng = random.Random(int(os.environ.get("FLOTILLA_TEST_SEED", "7")))
    spec = RolloutSpec(target_version="v1.30.4", max_unavailable=2, max_concurrent_clusters=3)
    process = start_service(UO, nats_server.url, tmp_path, **FAST)
    kills: list[int] = []  # steps executed when each kill landed
    try:
        await wait_until_serving(nats_server.url, UO)
        async with FlotillaClient(nats_server.url) as client:
            await plan_sees(client, spec, clusters=6)
            started = await client.request(
                UO, "upgrade.start", StartRolloutRequest(request_id="k1", spec=spec), StartRolloutReply
            )
            for _ in range(4):
                await asyncio.sleep(rng.uniform(0.3, 1.5))  # sleep: a kill at a random moment is the test
                os.kill(process.pid, signal.SIGKILL)
                process.wait(10)
                kills.append(agents.executed)
                process = start_service(UO, nats_server.url, tmp_path, **FAST)
                await wait_until_serving(nats_server.url, UO)
            done = await wait_for(client, started.rollout_id, {RolloutState.SUCCEEDED}, within_s=90)
        assert len(kills) == 4 and kills[0] > 0 and kills[-1] < 30 * 5, kills  # the kills landed mid-rollout
        assert done.rollout.nodes.succeeded == 30
        assert all(n.version == "v1.30.4" and not n.cordoned_by for n in nodes.values())
        assert agents.violations == []
        assert max(agents.effects.values()) == 1  # no (rollout, node, step, attempt) ran twice
        assert len(agents.effects) == 30 * 5
        events = await EventLog.read(nc)
        assert events.violations(max_unavailable=2, max_clusters=3) == []
    finally:
        await agents.stop()
        process.terminate()
        process.wait(15)
