"""The registration service's wiring: it serves `info` with its own identity under FastStream's TestNatsBroker."""

import msgspec
from faststream.nats import TestNatsBroker

from flotilla_contracts.subjects import Service, command
from flotilla_registration.app import SPEC
from flotilla_runtime.bus import make_broker
from flotilla_runtime.migrations import load_migrations
from flotilla_runtime.service import ServiceApp
from flotilla_runtime.settings import ServiceSettings
from flotilla_runtime.store import Store


async def test_info_reports_the_registration_service(tmp_path) -> None:
    # a configured key: with none, a new database would first ask the bus whether the fleet has members
    settings = SPEC.settings_type(state_dir=str(tmp_path), instance_id="t1", credential_key="k" * 32)
    assert isinstance(settings, ServiceSettings)
    store = await Store.open(tmp_path / "registration.db", load_migrations("flotilla_registration", "registration"))
    broker = make_broker("nats://127.0.0.1:1", "test")
    app = ServiceApp(SPEC, settings, store, broker, errors=None)  # type: ignore[arg-type]
    try:
        await SPEC.setup(app)
        app.router.install(broker)
        async with TestNatsBroker(broker) as test_broker:
            reply = await test_broker.request(b"{}", command(Service.REGISTRATION, "info"))
            data = msgspec.json.decode(reply.body)["data"]
    finally:
        await store.close()
    assert data["name"] == "registration"
    assert data["instance_id"] == "t1"
    assert data["state_path"].endswith("registration.db")
    assert "registration.JoinRequest/v1" in data["schemas"]
