"""A whole service in-process against a real nats-server: discovery, info, bad input, graceful stop."""

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client

from flotilla_client.natsserver import NatsServer
from flotilla_contracts import subjects
from flotilla_contracts.envelope import Message
from flotilla_contracts.streams import FLEET_EVENTS
from flotilla_contracts.subjects import Service
from flotilla_runtime import logins
from flotilla_runtime.commands import CommandContext
from flotilla_runtime.service import BusLogin, ServiceApp, ServiceSpec, run
from flotilla_runtime.settings import ServiceSettings
from flotilla_testkit import eventually


class Emit(Message, frozen=True, kw_only=True):
    SCHEMA = "test.Emit"
    count: int


class Emitted(Message, frozen=True, kw_only=True):
    SCHEMA = "test.Emitted"
    ids: list[str]


class Happened(Message, frozen=True, kw_only=True):
    SCHEMA = "test.Happened"
    n: int


async def setup(app: ServiceApp[ServiceSettings]) -> None:
    @app.router.command("test.emit", Emit, Emitted)
    async def emit(request: Emit, ctx: CommandContext) -> Emitted:
        ids = []
        async with app.store.transaction() as tx:
            for n in range(request.count):
                ids.append(await tx.emit(f"fleet.v1.evt.cluster.c{n}.approved", Happened(n=n)))
        return Emitted(ids=ids)


SPEC = ServiceSpec(
    service=Service.SCHEDULER, version="1.2.3", description="test", settings_type=ServiceSettings, setup=setup
)


@dataclass
class Running:
    stop: asyncio.Event
    task: asyncio.Task[None]
    settings: ServiceSettings


@pytest.fixture
async def service(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[Running]:
    settings = ServiceSettings(nats_url=nats_server.url, state_dir=str(tmp_path / "svc"), instance_id="inst1")
    stop = asyncio.Event()
    task = asyncio.create_task(run(SPEC, settings, stop))
    running = Running(stop, task, settings)
    yield running
    stop.set()
    await asyncio.wait_for(task, 15)


async def request(nc: Client, subject: str, body: bytes = b"{}") -> dict[str, object]:
    async def answered() -> dict[str, object]:
        reply = await nc.request(subject, body, timeout=1)
        decoded: dict[str, object] = msgspec.json.decode(reply.data)
        return decoded

    # Exception: no responders or a timeout while the service is not subscribed yet.
    return await eventually(answered, f"a reply on {subject}", timeout_s=30, every_s=0.1, retrying=(Exception,))


async def test_discovery_ping_info_stats(service: Running, nc: Client) -> None:
    ping = await request(nc, "$SRV.PING.scheduler")
    assert ping["type"] == "io.nats.micro.v1.ping_response"
    assert (ping["name"], ping["id"], ping["version"]) == ("scheduler", "inst1", "1.2.3")
    await request(nc, subjects.command(Service.SCHEDULER, "info"))
    info = await request(nc, "$SRV.INFO.scheduler.inst1")
    assert {ep["subject"] for ep in info["endpoints"]} == {  # type: ignore[union-attr, index]
        "fleet.v1.cmd.scheduler.info",
        "fleet.v1.cmd.scheduler.test.emit",
    }
    # ADR-32 names (the nats CLI drops a reply with a dot in one): the subject keeps the verb as it is.
    assert {ep["name"] for ep in info["endpoints"]} == {"info", "test_emit"}  # type: ignore[union-attr, index]
    stats = await request(nc, "$SRV.STATS")
    by_name = {ep["name"]: ep for ep in stats["endpoints"]}  # type: ignore[union-attr, index]
    assert by_name["info"]["num_requests"] == 1
    assert stats["started"]


async def test_info_names_service_versions_and_state(service: Running, nc: Client) -> None:
    reply = await request(nc, subjects.command(Service.SCHEDULER, "info"))
    data = reply["data"]
    assert isinstance(data, dict)
    assert data["name"] == "scheduler"
    assert data["version"] == "1.2.3"
    assert "service.InfoReply/v1" in data["schemas"]
    assert data["state_path"] == str((Path(service.settings.state_dir) / "scheduler.db").resolve())


async def test_service_keeps_serving_after_bad_input(service: Running, nc: Client) -> None:
    subject = subjects.command(Service.SCHEDULER, "test.emit")
    bad = await request(nc, subject, b"{oops")
    assert bad["error"]["code"] == "malformed"  # type: ignore[index]
    big = await request(nc, subject, b'{"count": 1, "pad": "' + b"x" * 300_000 + b'"}')
    assert big["error"]["code"] == "too_large"  # type: ignore[index]
    good = await request(nc, subject, b'{"count": 1}')
    assert good["ok"] is True


async def test_graceful_stop_flushes_every_committed_event(service: Running, nc: Client) -> None:
    reply = await request(nc, subjects.command(Service.SCHEDULER, "test.emit"), b'{"count": 300}')
    ids = reply["data"]["ids"]  # type: ignore[index]
    service.stop.set()
    await asyncio.wait_for(service.task, 15)
    js = nc.jetstream()
    info = await js.stream_info(FLEET_EVENTS.name)
    assert info.state.messages == 300
    last = await js.get_msg(FLEET_EVENTS.name, info.state.last_seq)
    assert last.headers is not None and last.headers["Nats-Msg-Id"] == ids[-1]


async def test_health_probes(service: Running, nc: Client) -> None:
    ping = await request(nc, "$SRV.PING.scheduler")
    health_url = ping["metadata"]["health"]  # type: ignore[index]
    host, port = health_url.removeprefix("http://").split(":")
    for path, expected in (("/livez", b"200"), ("/readyz", b"200"), ("/nope", b"404")):
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        status_line = await reader.readline()
        writer.close()
        assert expected in status_line, path


async def test_a_service_waiting_for_its_login_stops_cleanly_without_connecting(tmp_path: Path) -> None:
    """`ServiceSpec.login` may wait for days (a join awaiting approval): a stop meanwhile ends the service."""
    called = asyncio.Event()

    async def never(_app: ServiceApp[ServiceSettings]) -> BusLogin:
        called.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    spec = ServiceSpec(Service.SCHEDULER, "1.2.3", "test", ServiceSettings, setup, login=never)
    # Nothing listens on this port: connecting would retry until the timeout below.
    settings = ServiceSettings(nats_url="nats://127.0.0.1:1", state_dir=str(tmp_path / "svc"), instance_id="i")
    stop = asyncio.Event()
    task = asyncio.create_task(run(spec, settings, stop))
    await asyncio.wait_for(called.wait(), 10)
    stop.set()
    await asyncio.wait_for(task, 5)


async def test_a_service_connects_with_the_url_its_login_returns(nats_server: NatsServer, tmp_path: Path) -> None:
    async def login(_app: ServiceApp[ServiceSettings]) -> BusLogin:
        return BusLogin(url=nats_server.url)

    spec = ServiceSpec(Service.SCHEDULER, "1.2.3", "test", ServiceSettings, setup, login=login)
    settings = ServiceSettings(nats_url="nats://127.0.0.1:1", state_dir=str(tmp_path / "svc"), instance_id="i")
    stop = asyncio.Event()
    task = asyncio.create_task(run(spec, settings, stop))
    nc = await logins.connect(nats_server.url)
    try:
        ping = await request(nc, "$SRV.PING.scheduler")
        assert ping["id"] == "i"
    finally:
        await nc.close()
        stop.set()
        await asyncio.wait_for(task, 15)


async def probe(health_url: str, path: str) -> tuple[int, str]:
    host, port = health_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    response = (await reader.read()).decode()
    writer.close()
    return int(response.split()[1]), response.split("\r\n\r\n", 1)[1].strip()


async def test_readyz_says_why_while_the_bus_is_down_and_recovers_when_it_returns(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    settings = ServiceSettings(
        nats_url=nats_server.url, state_dir=str(tmp_path / "svc"), instance_id="i", bus_down_grace_s=0.5
    )
    stop = asyncio.Event()
    task = asyncio.create_task(run(SPEC, settings, stop))
    nc = await logins.connect(nats_server.url)
    try:
        health_url = str((await request(nc, "$SRV.PING.scheduler"))["metadata"]["health"])  # type: ignore[index]
        await nc.close()
        assert await probe(health_url, "/readyz") == (200, "ready: connected")

        nats_server.stop()

        async def down_and_said() -> bool:
            status, body = await probe(health_url, "/readyz")
            return status == 503 and body.startswith("not ready: bus reconnecting for")

        await eventually(down_and_said, "/readyz to report the lost bus")
        assert (await probe(health_url, "/livez"))[0] == 200, "a reconnecting link is alive: no restart needed"

        nats_server.start()

        async def ready_again() -> bool:
            return (await probe(health_url, "/readyz"))[0] == 200

        await eventually(ready_again, "/readyz to recover once nats-server is back")
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


async def test_a_background_loop_that_fails_is_logged_and_started_again(
    nats_server: NatsServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A loop raising (a pull on a JetStream not serving yet) must never end silently, leaving events unread."""
    runs: list[int] = []
    again = asyncio.Event()

    async def flaky_setup(app: ServiceApp[ServiceSettings]) -> None:
        async def loop() -> None:
            runs.append(len(runs))
            if len(runs) == 1:
                raise RuntimeError("JetStream said 503")
            again.set()
            await asyncio.Event().wait()

        app.background(loop)

    spec = ServiceSpec(Service.SCHEDULER, "1.2.3", "test", ServiceSettings, flaky_setup)
    settings = ServiceSettings(nats_url=nats_server.url, state_dir=str(tmp_path / "svc"), instance_id="i")
    stop = asyncio.Event()
    task = asyncio.create_task(run(spec, settings, stop))
    try:
        await asyncio.wait_for(again.wait(), 15)
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
    assert len(runs) == 2
    failures = [r for r in caplog.records if "background task" in r.getMessage()]
    assert failures and failures[0].exc_info is not None, "the failure is logged with its traceback"
