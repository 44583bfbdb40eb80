"""The upgrade-orchestrator's wiring: it serves `info` and its upgrade commands under TestNatsBroker."""

import msgspec
from faststream.nats import TestNatsBroker

from flotilla_contracts.subjects import Service, command
from flotilla_runtime.bus import make_broker
from flotilla_runtime.migrations import load_migrations
from flotilla_runtime.service import ServiceApp
from flotilla_runtime.settings import ServiceSettings
from flotilla_runtime.store import Store
from flotilla_upgrade_orchestrator.app import SPEC


async def test_info_reports_the_upgrade_orchestrator_service(tmp_path) -> None:
    settings = SPEC.settings_type(state_dir=str(tmp_path), instance_id="t1")
    assert isinstance(settings, ServiceSettings)
    store = await Store.open(
        tmp_path / "upgrade-orchestrator.db", load_migrations("flotilla_upgrade_orchestrator", "upgrade-orchestrator")
    )
    broker = make_broker("nats://127.0.0.1:1", "test")
    app = ServiceApp(SPEC, settings, store, broker, errors=None)  # type: ignore[arg-type]
    await SPEC.setup(app)
    app.router.install(broker)
    async with TestNatsBroker(broker) as test_broker:
        reply = await test_broker.request(b"{}", command(Service.UPGRADE_ORCHESTRATOR, "info"))
        data = msgspec.json.decode(reply.body)["data"]
    assert data["name"] == "upgrade-orchestrator"
    assert data["instance_id"] == "t1"
    assert data["state_path"].endswith("upgrade-orchestrator.db")
    assert "upgrade.StartRolloutRequest/v1" in data["schemas"]
    assert {ep.verb for ep in app.router.endpoints} >= {
        "upgrade.plan",
        "upgrade.start",
        "upgrade.pause",
        "upgrade.resume",
        "upgrade.abort",
        "upgrade.approve",
        "upgrade.retry",
        "upgrade.skip",
        "upgrade.rollback",
        "upgrade.list",
        "upgrade.status",
    }
    await store.close()
