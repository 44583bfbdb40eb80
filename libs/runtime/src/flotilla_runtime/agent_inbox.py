"""An agent's commands, read only when there is work: woken by the command itself, then the durable consumer.

A fleet at rest must cost the bus nothing per node (docs/scale.md: a durable consumer per node with a pull
outstanding was what broke first at 10,000 nodes). So an agent holds no pull request while it has no work:

- It keeps a core NATS subscription on its own command subjects. A JetStream publish is an ordinary publish
  that the stream also stores, so every command reaches that subscription too: the wake-up call. Its body is
  ignored; the command is taken from the durable consumer, acknowledged after its effects are committed.
- Woken (and once at start, and after every reconnect: a command published while the connection was down
  woke nobody), it drains the consumer (`PullLoop.drain`) until nothing is pending or waiting for a
  redelivery, then lets go of it. A wake-up that comes while it drains makes it drain again.
- A node's consumer is created by the hub that sends it work, before the first command is published
  (flotilla_runtime.agent_consumers); the node only binds it, and a node with no consumer has had nothing
  sent. The cluster agent creates its own (one per cluster, `create=True`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from flotilla_runtime.pullloop import PullLoop


def on_reconnect(nc: Client, callback: Callable[[], None]) -> None:
    """Call `callback` after every reconnect of `nc`, after the callback it was given at connect time.

    nats-py keeps one reconnected callback per connection, set at connect time by whoever opened it (a
    Lifeline's); this chains another behind it."""
    before: Callable[[], Awaitable[None]] | None = nc._reconnected_cb

    async def chained() -> None:
        if before is not None:
            await before()
        callback()

    nc._reconnected_cb = chained


class AgentInbox:
    """One agent's commands (a node's, or its cluster agent's): subscribe, drain when woken, rest otherwise."""

    def __init__(self, nc: Client, js: JetStreamContext, loop: PullLoop, *, create: bool) -> None:
        self.nc, self.js, self.loop, self.create = nc, js, loop, create
        self.subject = loop.config.filter_subject or ""
        self.wake = asyncio.Event()
        self.nudged = asyncio.Event()  # a command woke us (not the start or a reconnect): no waiting for turns
        self.drains = 0  # how many times it read its consumer (tests and /metrics)
        self.draining = False

    async def run(self) -> None:
        """Drain at start, then at every wake-up, until cancelled."""
        sub = await self.nc.subscribe(self.subject, cb=self._woken)
        on_reconnect(self.nc, self.wake.set)
        self.wake.set()  # what was sent while we were away
        try:
            while True:
                await self.wake.wait()
                self.wake.clear()
                # A command is waiting: its drain does not take turns behind the process's other agents checking
                # at start or after a reconnect whether anything was sent (seen with 10,000 agents in one sim:
                # woken nodes queued for minutes behind the start-up checks, past their steps' deadlines).
                self.draining = True
                try:
                    await self.loop.drain(self.js, create=self.create, urgent=self.nudged)
                finally:
                    self.draining = False
                    self.drains += 1
                    if not self.wake.is_set():  # a command that came during the drain keeps its hurry
                        self.nudged.clear()
                self.loop.idle.set()
        finally:
            await _quietly(sub.unsubscribe())

    async def _woken(self, _msg: Msg) -> None:
        self.nudged.set()
        self.wake.set()


async def _quietly(aw: Awaitable[Any]) -> None:
    try:
        await aw
    except Exception:  # the connection is gone: so is the subscription
        return
