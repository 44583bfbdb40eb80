"""Fixtures of the upgrade-orchestrator's tests: the synchronous engine harness on a temporary SQLite file."""

from __future__ import annotations

from pathlib import Path

import pytest
from orchestrator_harness import Sim


@pytest.fixture
def sim(tmp_path: Path) -> Sim:
    return Sim(tmp_path / "orchestrator.db")


@pytest.fixture
async def commands(tmp_path: Path):  # type: ignore[no-untyped-def]
    """The upgrade commands under TestNatsBroker, with a real SQLite file, an injected clock, one lease."""
    from faststream.nats import TestNatsBroker
    from orchestrator_commands import Commands
    from orchestrator_harness import T0

    from flotilla_contracts.subjects import Service
    from flotilla_runtime.bus import make_broker
    from flotilla_runtime.commands import CommandRouter
    from flotilla_runtime.migrations import load_migrations
    from flotilla_runtime.store import Store
    from flotilla_upgrade_orchestrator.engine import Engine
    from flotilla_upgrade_orchestrator.handlers import Orchestrator

    store = await Store.open(tmp_path / "uo.db", load_migrations("flotilla_upgrade_orchestrator", "upgrade"))
    clock = [T0]
    orchestrator = Orchestrator(store=store, engine=Engine(), clock=lambda: clock[0])
    router = CommandRouter(Service.UPGRADE_ORCHESTRATOR, max_message_bytes=256 * 1024)
    orchestrator.register(router)
    broker = make_broker("nats://127.0.0.1:1", "test")
    router.install(broker)
    try:
        async with TestNatsBroker(broker) as test_broker:
            yield Commands(test_broker, store, orchestrator)
    finally:
        await store.close()
