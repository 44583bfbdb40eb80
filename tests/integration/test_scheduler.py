"""The scheduler as its own process on a real nats-server: cluster events from FLEET_EVENTS place a
subscription, its agent commands land in the FLEET_AGENT work queue, applied reports come back, and the
state survives a restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
from integration_support import service_log, start_service
from nats.aio.client import Client
from registration_support import wait_until_serving
from scheduler_support import NOW, approved, deployment_spec, publish

from flotilla_client.client import FlotillaClient
from flotilla_client.errors import ClientError
from flotilla_client.natsserver import NatsServer
from flotilla_contracts.ids import CLUSTER_AGENT_NODE
from flotilla_contracts.streams import FLEET_AGENT, agent_consumer
from flotilla_contracts.subjects import Service, agent_commands_for
from flotilla_contracts.v1 import scheduler as sched
from flotilla_contracts.v1.scheduler_events import AppliedStatusReported
from flotilla_testkit import eventually

pytestmark = pytest.mark.integration
SCHED = Service.SCHEDULER


async def agent_commands(nc: Client, cluster_id: str) -> list[dict[str, Any]]:
    """What the cluster agent of `cluster_id` would receive, taken from its work queue."""
    js = nc.jetstream()
    sub = await js.pull_subscribe(
        agent_commands_for(cluster_id, CLUSTER_AGENT_NODE),
        durable=agent_consumer(cluster_id, CLUSTER_AGENT_NODE),
        stream=FLEET_AGENT.name,
    )
    found = []
    try:
        for msg in await sub.fetch(10, timeout=2):
            found.append(msgspec.json.decode(msg.data))
            await msg.ack()
    except TimeoutError:
        pass
    await sub.unsubscribe()
    return found


async def test_events_place_agent_commands_flow_and_state_survives_restart(
    nats_server: NatsServer, nc: Client, tmp_path: Path
) -> None:
    process = start_service(SCHED, nats_server.url, tmp_path)
    try:
        await wait_until_serving(nats_server.url, SCHED)
        js = nc.jetstream()
        async with FlotillaClient(nats_server.url) as client:
            spec = msgspec.convert(deployment_spec("web", "env=prod"), sched.SubscriptionSpec)
            reply = await client.request(
                SCHED, "subscriptions.apply", sched.ApplySubscriptionRequest(spec=spec), sched.ApplySubscriptionReply
            )
            assert reply.created
            for cid, env in (("c1", "prod"), ("c2", "prod"), ("c3", "dev")):
                await publish(js, approved(cid, env=env), cluster_id=cid)

            async def placed() -> list[str] | None:
                info = await client.request(
                    SCHED, "subscriptions.get", sched.GetSubscriptionRequest(name="web"), sched.GetSubscriptionReply
                )
                ids = [p.cluster_id for p in info.subscription.placements]
                return ids if len(ids) == 2 else None

            assert await eventually(placed, "web placed on two clusters", timeout_s=15) == ["c1", "c2"]
            commands = await agent_commands(nc, "c1")
            assert [(c["subscription"], c["placed"]) for c in commands] == [("web", True)]
            assert await agent_commands(nc, "c3") == []
            report = AppliedStatusReported(
                command_id=commands[0]["command_id"], cluster_id="c1", subscription="web", generation=1,
                state=sched.AppliedState.APPLIED, occurred_at=NOW,
            )  # fmt: skip
            await publish(js, report, cluster_id="c1", subscription="web")

            async def applied() -> bool:
                info = await client.request(
                    SCHED, "subscriptions.get", sched.GetSubscriptionRequest(name="web"), sched.GetSubscriptionReply
                )
                return any(
                    a.cluster_id == "c1" and a.state is sched.AppliedState.APPLIED for a in info.subscription.applied
                )

            assert await eventually(applied, "web applied on c1", timeout_s=15)
            with pytest.raises(ClientError) as bad:
                bad_spec = msgspec.convert(deployment_spec("bad", "env in (prod"), sched.SubscriptionSpec)
                await client.request(
                    SCHED, "subscriptions.apply", sched.ApplySubscriptionRequest(spec=bad_spec),
                    sched.ApplySubscriptionReply,
                )  # fmt: skip
            assert (bad.value.code, bad.value.details["field"]) == ("invalid_selector", "policy.selector")
        process.terminate()
        assert process.wait(15) == 0, service_log(tmp_path, SCHED)
        process = start_service(SCHED, nats_server.url, tmp_path)
        await wait_until_serving(nats_server.url, SCHED)
        async with FlotillaClient(nats_server.url) as client:
            assert await placed() == ["c1", "c2"]
            listed = await client.request(
                SCHED, "subscriptions.list", sched.ListSubscriptionsRequest(), sched.ListSubscriptionsReply
            )
            assert [(s.name, s.clusters, s.applied) for s in listed.subscriptions] == [("web", 2, 1)]
    finally:
        process.terminate()
        assert process.wait(15) == 0, service_log(tmp_path, SCHED)
