"""Nodes' consumers on demand, on a real nats-server: the hub creates a node's consumer before its first command,
the agent is woken by the command and drains it (also what was sent before it started, and while its link was
cut), holds no pull request at rest, and idle consumers are retired while busy ones and cluster agents' stay."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig

from flotilla_client.natsserver import NatsServer, free_port
from flotilla_contracts import subjects
from flotilla_contracts.ids import CLUSTER_AGENT_NODE
from flotilla_contracts.streams import FLEET_AGENT, agent_consumer, agent_consumer_ids
from flotilla_runtime import logins
from flotilla_runtime.agent_consumers import AgentConsumers, commanded_node
from flotilla_runtime.agent_inbox import AgentInbox
from flotilla_runtime.bus import ensure_streams
from flotilla_runtime.migrations import Migration
from flotilla_runtime.pullloop import ACK, DeadLetters, Outcome, PullLoop, one_at_a_time
from flotilla_runtime.store import Store
from flotilla_testkit import eventually

log = logging.getLogger("test-agent-inbox")
C, N = "c1", "n1"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(tmp_path / "s.db", [Migration("t", 1, "x", "CREATE TABLE x (y TEXT)")])
    try:
        yield opened
    finally:
        await opened.close()


class Node:
    """One node's inbox over its own connection, recording the commands it handled."""

    def __init__(self, nc: Client, store: Store, node: str = N, gate: asyncio.Semaphore | None = None) -> None:
        self.handled: list[bytes] = []
        name = agent_consumer(C, node)
        config = ConsumerConfig(name=name, durable_name=name, filter_subject=subjects.agent_commands_for(C, node))
        self.loop = PullLoop(
            stream=FLEET_AGENT.name, config=config, process=one_at_a_time(self.handle, log),
            dead_letters=DeadLetters(store, "node-agent", "t"), log=log, batch=1, fetch_timeout_s=0.5, gate=gate,
        )  # fmt: skip
        self.inbox = AgentInbox(nc, nc.jetstream(), self.loop, create=False)
        self.task: asyncio.Task[None] | None = None

    async def handle(self, msg: Msg) -> Outcome:
        self.handled.append(msg.data)
        return ACK

    def start(self) -> None:
        self.task = asyncio.create_task(self.inbox.run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task


async def command(nc: Client, keeper: AgentConsumers, body: bytes, node: str = N) -> None:
    """As the orchestrator's outbox relay does: the consumer first, then the command."""
    subject = subjects.agent_command(C, node, "step")
    await keeper.prepare([{"subject": subject}])  # type: ignore[list-item]
    await nc.jetstream().publish(subject, body)


async def waiting_pulls(nc: Client, node: str = N) -> int:
    info = await nc.jetstream().consumer_info(FLEET_AGENT.name, agent_consumer(C, node))
    return int(info.num_waiting or 0)


def test_only_node_commands_name_a_node_consumer() -> None:
    assert commanded_node(subjects.agent_command("c1", "n1", "step")) == ("c1", "n1")
    assert commanded_node(subjects.agent_command("c1", CLUSTER_AGENT_NODE, "apply")) is None
    assert commanded_node("fleet.v1.evt.rollout.r1.started") is None
    assert agent_consumer_ids(agent_consumer("a-b", "n-1")) == ("a-b", "n-1")
    assert agent_consumer_ids("fake-agents") is None and agent_consumer_ids("agent-9-short-x") is None


async def test_a_command_wakes_its_node_which_takes_it_and_then_holds_no_pull(nc: Client, store: Store) -> None:
    await ensure_streams(nc.jetstream())
    keeper = AgentConsumers(lambda: nc.jetstream())
    node = Node(nc, store)
    node.start()
    try:
        await eventually(lambda: node.inbox.drains >= 1, "the drain at start (no consumer yet: nothing sent)")
        assert node.handled == []
        with pytest.raises(nats.js.errors.NotFoundError):  # a node without work holds no consumer at all
            await nc.jetstream().consumer_info(FLEET_AGENT.name, agent_consumer(C, N))
        for i in range(3):
            await command(nc, keeper, f"step {i}".encode())
        await eventually(lambda: node.handled == [b"step 0", b"step 1", b"step 2"], "the three commands, in order")
        await eventually(lambda: waiting_pulls(nc), "no pull request left at rest", until=lambda n: n == 0)
        assert keeper.created == 1  # confirmed once, not once per command
    finally:
        await node.stop()


async def test_what_was_sent_before_the_agent_started_is_taken_at_start(nc: Client, store: Store) -> None:
    await ensure_streams(nc.jetstream())
    keeper = AgentConsumers(lambda: nc.jetstream())
    await command(nc, keeper, b"while away")
    node = Node(nc, store)
    node.start()
    try:
        await eventually(lambda: node.handled == [b"while away"], "the command sent before the agent started")
    finally:
        await node.stop()


async def test_a_woken_node_does_not_wait_its_turn_behind_agents_checking_at_start(nc: Client, store: Store) -> None:
    """Packed agents take turns checking their consumers at start; a command for one of them is not held up by
    that queue (10,000 agents in one sim: woken nodes waited minutes, past their steps' deadlines)."""
    await ensure_streams(nc.jetstream())
    keeper = AgentConsumers(lambda: nc.jetstream())
    gate = asyncio.Semaphore(1)
    await gate.acquire()  # the other agents' start-up checks hold every turn
    node = Node(nc, store, gate=gate)
    node.start()
    try:
        await command(nc, keeper, b"urgent")
        await eventually(lambda: node.handled == [b"urgent"], "the command, without waiting for a turn")
    finally:
        await node.stop()
        gate.release()


class Cut:
    """A TCP relay to nats-server that can cut every link through it and refuse new ones until restored."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream, self.port, self.open = upstream_port, free_port(), True
        self.links: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._link, "127.0.0.1", self.port)

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.open:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        self.links += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        self.open = False
        for writer in self.links:
            writer.close()
        self.links.clear()

    async def stop(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()


async def test_a_command_sent_while_the_link_was_down_is_taken_after_the_reconnect(
    nats_server: NatsServer, nc: Client, store: Store
) -> None:
    await ensure_streams(nc.jetstream())
    keeper = AgentConsumers(lambda: nc.jetstream())
    relay = Cut(nats_server.port)
    await relay.start()
    reconnected = asyncio.Event()

    async def on_reconnected() -> None:
        reconnected.set()

    agent_nc = await logins.connect(
        f"nats://127.0.0.1:{relay.port}", reconnect_time_wait=0.2, max_reconnect_attempts=-1,
        reconnected_cb=on_reconnected,
    )  # fmt: skip
    node = Node(agent_nc, store)
    node.start()
    try:
        await command(nc, keeper, b"before")
        await eventually(lambda: node.handled == [b"before"], "the first command")
        await eventually(lambda: not node.inbox.draining, "the agent at rest (no drain going on)")
        relay.cut()
        await eventually(lambda: not agent_nc.is_connected, "the agent to lose its link")
        await command(nc, keeper, b"while cut")  # its wake-up reaches nobody
        relay.open = True
        await eventually(reconnected.is_set, "the agent to reconnect (the connect-time callback still runs)")
        await eventually(lambda: node.handled == [b"before", b"while cut"], "the command sent while it was cut off")
    finally:
        await node.stop()
        await agent_nc.close()
        await relay.stop()


async def test_idle_node_consumers_are_retired_busy_ones_and_cluster_agents_kept(nc: Client) -> None:
    js = nc.jetstream()
    await ensure_streams(js)
    now = [1_000_000.0]
    keeper = AgentConsumers(lambda: js, confirm_s=60, idle_s=600, clock=lambda: now[0])
    await command(nc, keeper, b"never taken", node="busy")
    await keeper.ensure([(C, "idle")])
    cluster_agent = agent_consumer(C, CLUSTER_AGENT_NODE)
    await js.add_consumer(
        FLEET_AGENT.name,
        ConsumerConfig(
            name=cluster_agent, durable_name=cluster_agent, filter_subject=subjects.agent_commands_for(C, "_cluster")
        ),
    )
    names = await _names(js)
    assert names == {agent_consumer(C, "busy"), agent_consumer(C, "idle"), cluster_agent}

    assert await keeper.retire_idle() == 0  # just ensured: not idle whatever the server's clock says
    now[0] += 10**10  # long after: the server's own timestamps (creation, last delivery) are old too
    assert await keeper.retire_idle() == 1
    assert await _names(js) == {agent_consumer(C, "busy"), cluster_agent}  # a command waits in `busy`
    # Retired, it is created again before its next command: the keeper forgot it had confirmed it.
    await command(nc, keeper, b"again", node="idle")
    assert agent_consumer(C, "idle") in await _names(js)


async def _names(js: Any) -> set[str]:
    return {info.name for info in await js.consumers_info(FLEET_AGENT.name)}
