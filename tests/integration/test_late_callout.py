"""Agents logging in while registration's auth callout answers late, on `flotilla up`'s bus configuration (the
callout, a 5 s authorization timeout) with registration's real callout in this process, made late on purpose.

nats-server sends its first PING to a client 2-2.4 s after it started processing the client's CONNECT, even while
that CONNECT still waits for the callout. nats-py's connect reads one line after its CONNECT and PING and takes it
for the server's answer: the server's PING left the client CONNECTING for good, its flusher stopped, writing
nothing but its own PINGs, while the server held the connection as authorized. Every request on it timed out until
the server closed it as stale minutes later (docs/scale.md, "Connections that went silent"). Marked
`integration`: starts nats-server."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from flotilla_client import busauth
from flotilla_client.natsserver import NatsServer, free_port
from flotilla_contracts import permissions, subjects
from flotilla_contracts.subjects import Service
from flotilla_node_agent.bus_login import connect_as
from flotilla_registration import domain
from flotilla_registration import store as repo
from flotilla_registration.callout import AuthCallout
from flotilla_runtime.lifeline import Lifeline, LinkState, login_answered
from flotilla_runtime.migrations import load_migrations
from flotilla_runtime.store import Store
from flotilla_testkit import eventually

pytestmark = pytest.mark.integration
HOLD_S = 3.5  # past the server's first PING (2-2.4 s into the CONNECT), within its 5 s authorization timeout
AGENTS = 4
JOIN = subjects.command(Service.REGISTRATION, "join")


@dataclass
class Bus:
    server: NatsServer
    monitor: int
    callout: AuthCallout
    token: str
    holds: list[float]  # how long to hold the answers to the next logins (then HOLD_S each)

    @property
    def url(self) -> str:
        return self.server.url

    def connz(self) -> list[dict[str, Any]]:
        """The server's view of the agents' connections: `join.*` users, with their subscriptions and messages in."""
        url = f"http://127.0.0.1:{self.monitor}/connz?auth=true&limit=1024"
        with urllib.request.urlopen(url, timeout=5) as answer:
            found: list[dict[str, Any]] = json.load(answer).get("connections") or []
        return [c for c in found if str(c.get("authorized_user", "")).startswith("join.")]


def late(answer: Callable[[Msg], Awaitable[None]], holds: list[float]) -> Callable[[Msg], Awaitable[None]]:
    """The callout's subscription callback, answering each request late: `holds` in turn, then `HOLD_S` (each on
    its own task, as the callout answers side by side)."""
    tasks: set[asyncio.Task[None]] = set()

    async def hold_then_answer(msg: Msg, hold_s: float) -> None:
        await asyncio.sleep(hold_s)  # sleep: the fault under test, an auth callout answering late
        await answer(msg)

    async def on_request(msg: Msg) -> None:
        task = asyncio.create_task(hold_then_answer(msg, holds.pop(0) if holds else HOLD_S))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    return on_request


@pytest.fixture
async def bus(tmp_path: Path) -> AsyncIterator[Bus]:
    """nats-server configured as `flotilla up` configures it, registration's callout (late) and a join token."""
    auth = busauth.new_auth()
    monitor = free_port()
    server = NatsServer(
        state_dir=tmp_path / "nats",
        port=free_port(),
        monitor_port=monitor,
        log_file=tmp_path / "nats-server.log",
        extra_config=busauth.server_config(auth),
    )
    server.start()
    store = await Store.open(tmp_path / "registration.db", load_migrations("flotilla_registration", "registration"))
    registration: Client | None = None
    try:
        new = domain.new_token(
            now=datetime.now(UTC), ttl_s=None, max_uses=None, auto_approve=True, labels={}, description="late"
        )
        await store.run(lambda tx: repo.insert_token(tx, new.info, new.secret_hash))
        callout = AuthCallout(store, b"k" * 32, auth.callout_seed)
        holds: list[float] = []
        registration = await nats.connect(
            server.url, user=Service.REGISTRATION.value, password=auth.passwords[Service.REGISTRATION.value],
            inbox_prefix=permissions.inbox_prefix(Service.REGISTRATION.value),
        )  # fmt: skip
        await registration.subscribe(
            permissions.AUTH_CALLOUT_SUBJECT, queue="registration", cb=late(callout.on_request, holds)
        )

        async def answer_join(msg: Msg) -> None:  # registration's join handler, standing in: any answer will do
            await msg.respond(b"heard")

        await registration.subscribe(JOIN, queue="registration", cb=answer_join)
        await registration.flush()
        yield Bus(server, monitor, callout, new.token, holds)
    finally:
        if registration is not None:
            await registration.close()
        await store.close()
        server.stop()


async def answered(client: Client) -> bool:
    """True when the agent's request over its connection gets an answer."""
    try:
        reply = await client.request(JOIN, b"{}", timeout=1.0)
    except nats.errors.TimeoutError:
        return False
    return reply.data == b"heard"


async def test_agents_logging_in_while_the_callout_answers_late_are_served_on_the_connection_they_got(bus: Bus) -> None:
    links = [Lifeline(f"late-agent-{i}") for i in range(AGENTS)]
    clients = await asyncio.gather(
        *(connect_as(bus.url, f"join.latenonce{i}", bus.token, link.name, link) for i, link in enumerate(links))
    )
    try:
        assert [link.stats.late_logins for link in links] == [1] * AGENTS, "the server's PING came before its answer"
        for client, link in zip(clients, links, strict=True):
            await eventually(lambda c=client: answered(c), f"{link.name}'s request answered", timeout_s=20)  # type: ignore[misc]
            assert link.state is LinkState.CONNECTED, link.reason
        seen = await eventually(
            lambda: asyncio.to_thread(bus.connz),
            "the server to see every agent's connection carry its request",
            until=lambda conns: (
                len(conns) == AGENTS and all(c["subscriptions"] >= 1 and c["in_msgs"] >= 1 for c in conns)
            ),
        )
        assert len(seen) == AGENTS
        assert bus.callout.stats.granted == AGENTS, "each agent logged in once: no login was thrown away and made again"
    finally:
        for client in clients:
            await client.close()


async def test_a_login_answered_after_the_server_gave_up_is_not_answered_and_made_again(bus: Bus) -> None:
    """Held past the 5 s authorization timeout, the first answer would be thrown away by the server: the callout
    drops it, the server gives up on the login and the agent tries again (with the lifeline's back-off), and the
    next login is served."""
    bus.holds.append(6.0)
    link = Lifeline("late-agent-refused-first")
    client = await connect_as(bus.url, "join.latenoncer", bus.token, link.name, link)
    try:
        await eventually(lambda: answered(client), "the agent's request answered", timeout_s=20)
        assert link.stats.late_logins == 2, "the first login, held past the server's timer, was made again once"
        assert bus.callout.stats.late == 1, "the answer the server had stopped waiting for was not made"
        assert bus.callout.stats.granted == 1
    finally:
        await client.close()


async def test_a_plain_client_logged_in_late_works_once_its_login_is_answered(bus: Bus) -> None:
    """A one-shot connection without a lifeline (a test counting the server's denials, a tool): `login_answered`
    waits for the server's answer nats-py's connect did not wait for; without it the request below goes nowhere."""
    client = await nats.connect(
        bus.url, user="join.lateplain", password=bus.token, inbox_prefix=permissions.inbox_prefix("join.lateplain"),
        allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=10,
    )  # fmt: skip
    try:
        assert client.is_connecting, "the server's PING came before its answer: nats-py returned too early"
        await login_answered(client)
        assert client.is_connected
        assert await answered(client)
    finally:
        await client.close()


async def test_a_plain_client_refused_late_hears_the_refusal(bus: Bus) -> None:
    client = await nats.connect(
        bus.url, user="join.lateplainrefused", password="not-a-token",
        allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=10,
    )  # fmt: skip
    with pytest.raises(nats.errors.AuthorizationError):
        await login_answered(client)
    assert client.is_closed
