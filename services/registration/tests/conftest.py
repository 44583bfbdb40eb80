"""Registration under FastStream's TestNatsBroker, with a real SQLite file and an injected clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from callout_support import Callout, running_callout
from faststream.nats import TestNatsBroker
from registration_harness import Clock, Harness

from flotilla_contracts.subjects import Service
from flotilla_registration.app import Settings
from flotilla_registration.handlers import Registration
from flotilla_runtime.bus import make_broker
from flotilla_runtime.commands import CommandRouter
from flotilla_runtime.migrations import load_migrations
from flotilla_runtime.store import Store


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    store = await Store.open(tmp_path / "registration.db", load_migrations("flotilla_registration", "registration"))
    clock = Clock()
    try:
        registration = Registration(store=store, credential_key=b"k" * 32, policy=None, clock=clock)
        router = CommandRouter(Service.REGISTRATION, max_message_bytes=Settings().max_message_bytes)
        registration.register(router)
        broker = make_broker("nats://127.0.0.1:1", "test")
        router.install(broker)
        async with TestNatsBroker(broker) as test_broker:
            yield Harness(test_broker, store, clock, registration)
    finally:
        await store.close()


@pytest.fixture
async def callout(tmp_path: Path) -> AsyncIterator[Callout]:
    """A real nats-server whose auth callout a test responder answers (callout_support.py)."""
    async with running_callout(tmp_path) as running:
        yield running
