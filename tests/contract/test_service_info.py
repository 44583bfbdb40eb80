"""Every service's wiring serves `info` with its own identity, under FastStream's TestNatsBroker (no nats-server).

One test over the five services, each built from its own `ServiceSpec` (settings, migrations, setup) the way
`flotilla_runtime.service.run` builds it. The orchestrator's own commands are checked in its test_app.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
from faststream.nats import TestNatsBroker

from flotilla_contracts.subjects import Service, command
from flotilla_heartbeat.app import SPEC as HEARTBEAT
from flotilla_node_agent.app import SPEC as NODE_AGENT
from flotilla_registration.app import SPEC as REGISTRATION
from flotilla_runtime.bus import BusErrors, make_broker
from flotilla_runtime.migrations import load_migrations
from flotilla_runtime.service import ServiceApp, ServiceSpec
from flotilla_runtime.settings import ServiceSettings
from flotilla_runtime.store import Store
from flotilla_scheduler.app import SPEC as SCHEDULER
from flotilla_upgrade_orchestrator.app import SPEC as UPGRADE_ORCHESTRATOR

SPECS: dict[Service, ServiceSpec[Any]] = {
    Service.REGISTRATION: REGISTRATION,
    Service.HEARTBEAT: HEARTBEAT,
    Service.SCHEDULER: SCHEDULER,
    Service.UPGRADE_ORCHESTRATOR: UPGRADE_ORCHESTRATOR,
    Service.NODE_AGENT: NODE_AGENT,
}

# Settings a service needs to set up offline: registration, with no credential key, would first ask the bus
# whether the fleet has members.
EXTRA_SETTINGS: dict[Service, dict[str, Any]] = {Service.REGISTRATION: {"credential_key": "k" * 32}}

# A schema each service must list as its own (the heartbeat and the node-agent serve no command of their own).
OWN_SCHEMA: dict[Service, str] = {
    Service.REGISTRATION: "registration.JoinRequest/v1",
    Service.SCHEDULER: "scheduler.ApplySubscriptionRequest/v1",
    Service.UPGRADE_ORCHESTRATOR: "upgrade.StartRolloutRequest/v1",
}


def test_every_service_has_a_spec() -> None:
    assert set(SPECS) == set(Service)
    assert all(spec.service is service for service, spec in SPECS.items())


@pytest.mark.parametrize("service", list(Service), ids=str)
async def test_info_reports_the_service_itself(service: Service, tmp_path: Path) -> None:
    spec = SPECS[service]
    settings = spec.settings_type(state_dir=str(tmp_path), instance_id="t1", **EXTRA_SETTINGS.get(service, {}))
    assert isinstance(settings, ServiceSettings)
    migrations = load_migrations(spec.migrations_package, service.value) if spec.migrations_package else []
    store = await Store.open(tmp_path / f"{service.value}.db", migrations)
    broker = make_broker("nats://127.0.0.1:1", "test")
    app = ServiceApp(spec, settings, store, broker, errors=BusErrors())
    try:
        await spec.setup(app)
        app.router.install(broker)
        async with TestNatsBroker(broker) as test_broker:
            reply = await test_broker.request(b"{}", command(service, "info"))
            data = msgspec.json.decode(reply.body)["data"]
    finally:
        await store.close()
    assert data["name"] == service.value
    assert data["instance_id"] == "t1"
    assert data["state_path"].endswith(f"{service.value}.db")
    if service in OWN_SCHEMA:
        assert OWN_SCHEMA[service] in data["schemas"]
