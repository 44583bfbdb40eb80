"""Registration as its own process on a real nats-server: joins land in FLEET_EVENTS, survive SIGKILL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import pytest
from integration_support import start_service
from nats.aio.client import Client
from registration_support import StreamView, join_request, read_stream, wait_until_serving

from flotilla_client.client import FlotillaClient
from flotilla_client.errors import ClientError
from flotilla_client.natsserver import NatsServer
from flotilla_contracts.subjects import Service
from flotilla_contracts.v1 import registration as reg

pytestmark = pytest.mark.integration
REG = Service.REGISTRATION


async def new_token(client: FlotillaClient, **options: object) -> str:
    reply = await client.request(REG, "tokens.create", reg.CreateTokenRequest(**options), reg.CreateTokenReply)  # type: ignore[arg-type]
    return reply.token


async def test_join_approve_and_replay_the_lifecycle_from_the_stream(
    nats_server: NatsServer, nc: Client, tmp_path: Path
) -> None:
    process = start_service(REG, nats_server.url, tmp_path)
    try:
        await wait_until_serving(nats_server.url, REG)
        async with FlotillaClient(nats_server.url) as client:
            token = await new_token(client)
            joined = await client.request(REG, "join", join_request(token, "alpha", nodes=3), reg.JoinReply)
            assert joined.state is reg.ClusterState.PENDING
            await client.request(
                REG, "clusters.approve", reg.ApproveClusterRequest(cluster_id=joined.cluster_id), reg.ClusterReply
            )
            with pytest.raises(ClientError) as caught:
                await client.request(
                    REG, "clusters.approve", reg.ApproveClusterRequest(cluster_id=joined.cluster_id), reg.ClusterReply
                )
            assert caught.value.code == "conflict"
            with pytest.raises(ClientError) as bad:
                await client.request(
                    REG, "clusters.list", reg.ListClustersRequest(selector="env in (a"), reg.ListClustersReply
                )
            assert bad.value.code == "invalid_selector"
        # A service that starts late rebuilds its read model from the stream alone.
        view = await read_stream(
            nc,
            until=lambda v: sum(v.count("approved").values()) >= 1 and _node_events(v) >= 3,
            what="the approval and the three node events in FLEET_EVENTS",
        )
        lifecycle = [s.rsplit(".", 1)[1] for s in view.subjects if s.startswith("fleet.v1.evt.cluster.")]
        assert lifecycle == ["join-requested", "approved"]
        assert sum(1 for s in view.subjects if s.startswith("fleet.v1.evt.node.")) == 3
        assert not view.duplicated_ids()
    finally:
        process.terminate()
        assert process.wait(15) == 0


async def test_sigkill_in_a_burst_loses_no_committed_join_and_duplicates_no_event(
    nats_server: NatsServer, nc: Client, tmp_path: Path
) -> None:
    process = start_service(REG, nats_server.url, tmp_path)
    try:
        await _burst_kill_and_restart(process, nats_server, nc, tmp_path)
    finally:
        if process.poll() is None:  # the test failed before its SIGKILL: leave no process behind
            process.kill()
            process.wait()


async def _burst_kill_and_restart(
    process: subprocess.Popen[bytes], nats_server: NatsServer, nc: Client, tmp_path: Path
) -> None:
    await wait_until_serving(nats_server.url, REG)
    async with FlotillaClient(nats_server.url) as client:
        token = await new_token(client, auto_approve=True)
        requests = [join_request(token, f"burst-{i}", nodes=5) for i in range(400)]
        answered: dict[str, str] = {}
        hundred_answered = asyncio.Event()

        async def join(request: reg.JoinRequest) -> None:
            try:
                reply = await client.request(REG, "join", request, reg.JoinReply, timeout=3)
                answered[request.request_id] = reply.cluster_id
                if len(answered) >= 100:
                    hundred_answered.set()
            except ClientError:
                pass  # in flight when the service died

        tasks = [asyncio.create_task(join(r)) for r in requests]
        await asyncio.wait_for(hundred_answered.wait(), 30)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        await asyncio.gather(*tasks)
        assert 100 <= len(answered) < len(requests), "the kill should land in the middle of the burst"

        restarted = start_service(REG, nats_server.url, tmp_path)
        try:
            await wait_until_serving(nats_server.url, REG)
            # Agents retry what was not answered, with the same request ids; answered ones stay the same.
            for request in requests:
                reply = await client.request(REG, "join", request, reg.JoinReply, timeout=5)
                if request.request_id in answered:
                    assert reply.cluster_id == answered[request.request_id]
            view = await read_stream(
                nc,
                until=lambda v: (
                    len(v.count("join-requested")) >= len(requests) and _node_events(v) >= 5 * len(requests)
                ),
                what=f"{len(requests)} join-requested events and their node events in FLEET_EVENTS",
            )
        finally:
            restarted.terminate()
            assert restarted.wait(15) == 0
    assert not view.duplicated_ids(), "an event was published twice"
    requested = view.count("join-requested")
    assert len(requested) == len(requests), "every join has its join-requested event"
    assert all(n == 1 for n in requested.values()), "one join-requested event per cluster"
    assert set(answered.values()) <= set(requested), "a join that was answered was lost"
    assert sum(1 for s in view.subjects if s.startswith("fleet.v1.evt.node.")) == 5 * len(requests)


def _node_events(view: StreamView) -> int:
    return sum(1 for s in view.subjects if s.startswith("fleet.v1.evt.node."))
