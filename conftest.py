"""Fixtures shared by every test folder: a real nats-server on a free port, and a service runner."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from flotilla_client.natsserver import NatsServer, free_port
from flotilla_runtime import logins


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A real nats-server with JetStream, its state in the test's temporary folder."""
    server = NatsServer(state_dir=tmp_path / "nats", port=free_port(), log_file=tmp_path / "nats-server.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    """A plain nats-py client connected to the test's server."""
    client = await logins.connect(nats_server.url)
    try:
        yield client
    finally:
        await client.close()
