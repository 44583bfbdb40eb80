"""A login nats-py's connect returned before the server answered it: once answered, the client's PONGs line up
with its PINGs again, so a flush returns only after the server read what was sent before it.

The peer is a scripted server (a few lines of the NATS protocol over a real socket), because what matters is the
order of lines on the wire: a real nats-server sends the same lines, but when each arrives depends on the
machine's load (the CI failure this guards against: "no responders" for a subscription a flush had confirmed)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import nats.errors
import pytest

from flotilla_runtime.logins import connect
from flotilla_testkit import eventually

INFO = {"server_id": "SCRIPTED", "server_name": "scripted", "version": "2.10.0", "proto": 1, "max_payload": 1 << 20}


@dataclass
class LateServer:
    """Answers a login late, as nats-server does when its auth callout is slow: its own PING goes out before the
    answer (nats-py takes that PING for the answer). PINGs that came before the client's subscription are answered
    late, with the answer to the first PING after it (a server whose writes are late on a loaded machine). That
    PING (the client's flush) it answers only when `release` is set, after a message on the subscription (sid 1)
    that shows the client has read everything sent before."""

    refuse: bool = False
    release: asyncio.Event = field(default_factory=asyncio.Event)
    pings_before_answer: int = 0
    flush_ping_seen: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"INFO " + json.dumps(INFO).encode() + b"\r\n")
        await reader.readline()  # CONNECT
        await reader.readline()  # connect's PING
        writer.write(b"PING\r\n")  # ours, before the answer
        while (line := await reader.readline()) != b"PONG\r\n":  # the client answered it: it waits for the answer
            self.pings_before_answer += line == b"PING\r\n"
        if self.refuse:
            writer.write(b"-ERR 'Authorization Violation'\r\n")
            await writer.drain()
            writer.close()
            return
        writer.write(b"PONG\r\n")  # the answer to connect's PING: logged in
        await writer.drain()
        late_pongs, subscribed = self.pings_before_answer, False
        while line := await reader.readline():
            subscribed = subscribed or line.startswith(b"SUB ")
            if line != b"PING\r\n":
                continue
            if not subscribed:  # sent before the client was told it is logged in: answered late
                late_pongs += 1
                continue
            writer.write(b"PONG\r\n" * late_pongs)
            late_pongs = 0
            writer.write(b"MSG marker 1 4\r\nseen\r\n")
            await writer.drain()
            self.flush_ping_seen.set()
            await self.release.wait()
            writer.write(b"PONG\r\n")
            await writer.drain()


@contextlib.asynccontextmanager
async def late_server(refuse: bool = False) -> AsyncIterator[LateServer]:
    script = LateServer(refuse=refuse)
    server = await asyncio.start_server(script.serve, "127.0.0.1", 0)
    script.port = server.sockets[0].getsockname()[1]
    try:
        yield script
    finally:
        script.release.set()
        server.close()


async def test_a_flush_after_a_late_login_waits_for_its_own_answer() -> None:
    async with late_server() as server:
        client = await connect(f"nats://127.0.0.1:{server.port}", allow_reconnect=False, connect_timeout=5)
        try:
            assert client.is_connected
            seen: list[bytes] = []

            async def on_marker(msg: nats.aio.msg.Msg) -> None:
                seen.append(msg.data)

            await client.subscribe("marker", cb=on_marker)
            flushed = asyncio.create_task(client.flush(timeout=30))
            await server.flush_ping_seen.wait()
            await eventually(lambda: seen, "the message sent after any late answer")
            assert not flushed.done(), "the flush returned on an answer to an earlier PING"
            server.release.set()
            await flushed
        finally:
            await client.close()


async def test_a_login_refused_late_is_refused_and_closed() -> None:
    async with late_server(refuse=True) as server:
        with pytest.raises(nats.errors.Error, match=r"(?i)authorization"):
            await connect(f"nats://127.0.0.1:{server.port}", allow_reconnect=False, connect_timeout=5)
