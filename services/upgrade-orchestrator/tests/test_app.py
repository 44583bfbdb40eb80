"""The upgrade-orchestrator's wiring: it installs its upgrade commands (its `info` reply is checked with the other
services' in tests/contract/test_service_info.py)."""

from flotilla_runtime.bus import make_broker
from flotilla_runtime.migrations import load_migrations
from flotilla_runtime.service import ServiceApp
from flotilla_runtime.settings import ServiceSettings
from flotilla_runtime.store import Store
from flotilla_upgrade_orchestrator.app import SPEC


async def test_setup_installs_the_upgrade_commands(tmp_path) -> None:
    settings = SPEC.settings_type(state_dir=str(tmp_path), instance_id="t1")
    assert isinstance(settings, ServiceSettings)
    store = await Store.open(
        tmp_path / "upgrade-orchestrator.db", load_migrations("flotilla_upgrade_orchestrator", "upgrade-orchestrator")
    )
    broker = make_broker("nats://127.0.0.1:1", "test")
    app = ServiceApp(SPEC, settings, store, broker, errors=None)  # type: ignore[arg-type]
    try:
        await SPEC.setup(app)
        app.router.install(broker)
    finally:
        await store.close()
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
