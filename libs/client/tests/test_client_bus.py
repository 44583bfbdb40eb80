"""FlotillaClient against a real nats-server (no services): headers, errors, discovery and events."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from flotilla_client.client import FlotillaClient
from flotilla_client.errors import ClientError
from flotilla_client.natsserver import NatsServer, free_port
from flotilla_contracts.envelope import ErrorBody, Reply
from flotilla_contracts.errors import ErrorCode
from flotilla_contracts.subjects import Service
from flotilla_contracts.v1.service import InfoReply, InfoRequest
from flotilla_runtime.bus import ensure_streams


async def test_unreachable_server_names_the_url_and_what_to_do() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    with pytest.raises(ClientError) as caught:
        await FlotillaClient(url).connect()
    assert caught.value.code == "unavailable"
    assert url in caught.value.message and "flotilla up" in caught.value.message and "--server" in caught.value.message


async def test_request_to_a_service_nobody_runs_is_unavailable(nats_server: NatsServer) -> None:
    async with FlotillaClient(nats_server.url) as client:
        with pytest.raises(ClientError) as caught:
            await client.request(Service.SCHEDULER, "info", InfoRequest(), InfoReply, timeout=2)
    assert caught.value.code == "unavailable" and "scheduler service is not running" in caught.value.message


async def test_request_sends_flotilla_headers_and_decodes_data_or_error(nats_server: NatsServer, nc: Client) -> None:
    seen: list[dict[str, str]] = []

    async def answer(msg: Msg) -> None:
        seen.append(dict(msg.headers or {}))
        if len(seen) == 1:
            reply = Reply(
                ok=True, data=InfoReply(name="registration", instance_id="i", version="1", contracts_version="1")
            )
        else:
            reply = Reply[InfoReply](
                ok=False, error=ErrorBody(code=ErrorCode.NOT_FOUND, message="no such", details={"f": 1})
            )
        await msg.respond(msgspec.json.encode(reply))

    await nc.subscribe("fleet.v1.cmd.registration.info", cb=answer)
    await nc.flush()
    from flotilla_runtime import telemetry

    telemetry.setup_tracing("test-client", "0", "t")
    async with FlotillaClient(nats_server.url) as client:
        info = await client.request(Service.REGISTRATION, "info", InfoRequest(), InfoReply)
        with pytest.raises(ClientError) as caught:
            await client.request(Service.REGISTRATION, "info", InfoRequest(), InfoReply)
    assert isinstance(info, InfoReply) and info.name == "registration"
    assert (caught.value.code, caught.value.message, caught.value.details) == ("not_found", "no such", {"f": 1})
    headers = seen[0]
    assert headers["Flotilla-Schema"] == "service.InfoRequest/v1"
    assert len(headers["Nats-Msg-Id"]) == 32 and headers["Nats-Msg-Id"] != seen[1]["Nats-Msg-Id"]
    assert datetime.fromisoformat(headers["Flotilla-Sent-At"]) > datetime.now(UTC) - timedelta(minutes=1)
    assert headers["traceparent"].startswith("00-")
    sent_at = datetime.fromisoformat(headers["Flotilla-Sent-At"]).timestamp()
    assert float(headers["Flotilla-Reply-By"]) == pytest.approx(sent_at + 5.0, abs=1.0), "it waits 5 s: no longer"


async def test_a_request_nobody_answers_in_time_is_a_timeout(nats_server: NatsServer, nc: Client) -> None:
    await nc.subscribe("fleet.v1.cmd.heartbeat.info", cb=_ignore)
    await nc.flush()
    async with FlotillaClient(nats_server.url) as client:
        with pytest.raises(ClientError) as caught:
            await client.request(Service.HEARTBEAT, "info", InfoRequest(), InfoReply, timeout=0.3)
    assert caught.value.code == "timeout"


async def _ignore(_msg: Msg) -> None:
    return None


async def test_discover_collects_every_instance_with_stats(nats_server: NatsServer, nc: Client) -> None:
    started = "2025-01-01T00:00:00.123456789Z"

    def responder(name: str, instance: str) -> Callable[[Msg], Awaitable[None]]:
        async def reply(msg: Msg) -> None:
            kind = "stats" if msg.subject.startswith("$SRV.STATS") else "ping"
            doc: dict[str, object] = {"type": f"io.nats.micro.v1.{kind}_response", "name": name, "id": instance}
            doc["version"] = "9.9"
            if kind == "stats":
                doc |= {"started": started, "endpoints": [{"name": "info", "num_requests": 4, "num_errors": 1}]}
            await msg.respond(json.dumps(doc).encode())

        return reply

    for name, instance in (("registration", "a"), ("registration", "b"), ("heartbeat", "c")):
        await nc.subscribe("$SRV.PING", cb=responder(name, instance))
        await nc.subscribe("$SRV.STATS", cb=responder(name, instance))
    await nc.flush()
    async with FlotillaClient(nats_server.url) as client:
        records = await client.discover(timeout=2.0, expect=3)
    assert [(r.name, r.id) for r in records] == [("heartbeat", "c"), ("registration", "a"), ("registration", "b")]
    assert all(r.requests == 4 and r.errors == 1 and r.version == "9.9" for r in records)
    assert all(r.uptime_s is not None and r.uptime_s > 0 for r in records)


async def test_events_without_the_stream_say_what_to_do(nats_server: NatsServer) -> None:
    async with FlotillaClient(nats_server.url) as client:
        with pytest.raises(ClientError, match=r"FLEET_EVENTS does not exist.*flotilla up"):
            async for _event in client.events():
                pass


async def test_events_replay_filter_and_stop_when_caught_up(nats_server: NatsServer, nc: Client) -> None:
    js = nc.jetstream()
    await ensure_streams(js)
    for n, subject in enumerate(["fleet.v1.evt.cluster.a.approved", "fleet.v1.evt.node.a.n1.joined"] * 2):
        await js.publish(subject, json.dumps({"n": n}).encode(), headers={"Flotilla-Schema": "x.Y/v1"})
    async with FlotillaClient(nats_server.url) as client:
        every = [e async for e in client.events()]
        clusters = [e async for e in client.events("fleet.v1.evt.cluster.>")]
        future = [e async for e in client.events(since=datetime.now(UTC) + timedelta(hours=1))]
    assert [e.seq for e in every] == [1, 2, 3, 4]
    assert [e.data for e in clusters] == [{"n": 0}, {"n": 2}]
    assert clusters[0].schema == "x.Y/v1" and clusters[0].time.tzinfo is not None
    assert future == []
    consumers = await js.consumers_info("FLEET_EVENTS")
    assert all(not c.config.durable_name for c in consumers), "the client never creates durable consumers"


async def test_events_merge_the_services_events_and_the_members_reports_by_time(
    nats_server: NatsServer, nc: Client
) -> None:
    js = nc.jetstream()
    await ensure_streams(js)
    order = ["fleet.v1.evt.cluster.a.approved", "fleet.v1.evt.node-step.a.n1.reported"] * 2
    order.append("fleet.v1.evt.rollout-node.r.a.n1.state-changed")
    for n, subject in enumerate(order):
        await js.publish(subject, json.dumps({"n": n}).encode())
    async with FlotillaClient(nats_server.url) as client:
        every = [e async for e in client.events()]
        steps = [e async for e in client.events("fleet.v1.evt.node-step.>")]
        followed: list[str] = []
        async for event in client.events(follow=True):
            followed.append(event.subject)
            if len(followed) == len(order):
                await js.publish("fleet.v1.evt.node-step.a.n2.reported", b"{}")
            if len(followed) == len(order) + 1:
                break
    assert [e.data["n"] for e in every] == list(range(len(order)))
    assert [e.stream for e in every] == ["FLEET_EVENTS", "FLEET_REPORTS"] * 2 + ["FLEET_EVENTS"]
    assert [(e.stream, e.seq) for e in steps] == [("FLEET_REPORTS", 1), ("FLEET_REPORTS", 2)]
    assert followed == [*order, "fleet.v1.evt.node-step.a.n2.reported"]
