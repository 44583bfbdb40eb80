"""The scheduler service's wiring: it serves `info` with its own identity under FastStream's TestNatsBroker."""

import msgspec
from faststream.nats import TestNatsBroker

from flotilla_contracts.subjects import Service, command
from flotilla_runtime.bus import make_broker
from flotilla_runtime.migrations import load_migrations
from flotilla_runtime.service import ServiceApp
from flotilla_runtime.settings import ServiceSettings
from flotilla_runtime.store import Store
from flotilla_scheduler.app import SPEC


async def test_info_reports_the_scheduler_service(tmp_path) -> None:
    settings = SPEC.settings_type(state_dir=str(tmp_path), instance_id="t1")
    assert isinstance(settings, ServiceSettings)
    store = await Store.open(tmp_path / "scheduler.db", load_migrations("flotilla_scheduler", "scheduler"))
    broker = make_broker("nats://127.0.0.1:1", "test")
    app = ServiceApp(SPEC, settings, store, broker, errors=None)  # type: ignore[arg-type]
    await SPEC.setup(app)
    app.router.install(broker)
    async with TestNatsBroker(broker) as test_broker:
        reply = await test_broker.request(b"{}", command(Service.SCHEDULER, "info"))
        data = msgspec.json.decode(reply.body)["data"]
    assert data["name"] == "scheduler"
    assert data["instance_id"] == "t1"
    assert data["state_path"].endswith("scheduler.db")
    assert "scheduler.ApplySubscriptionRequest/v1" in data["schemas"]
    await store.close()
