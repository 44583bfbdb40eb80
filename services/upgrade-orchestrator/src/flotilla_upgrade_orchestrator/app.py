"""Wiring of the upgrade-orchestrator service: its settings, its commands and what it runs in the background."""

from __future__ import annotations

from flotilla_contracts.subjects import Service
from flotilla_runtime.service import ServiceApp, ServiceSpec
from flotilla_runtime.settings import ServiceSettings
from flotilla_upgrade_orchestrator import __version__


class Settings(ServiceSettings, kw_only=True, frozen=True):
    """`FLOTILLA_UPGRADE_ORCHESTRATOR_*` environment variables (see flotilla_runtime.settings for the shared ones)."""


async def setup(app: ServiceApp[Settings]) -> None:
    """Register handlers on the app; the runtime already serves `info` and service discovery."""
    app.log.debug("upgrade-orchestrator wired", extra={"commands": [ep.verb for ep in app.router.endpoints]})


SPEC = ServiceSpec(
    service=Service.UPGRADE_ORCHESTRATOR,
    version=__version__,
    description="Plans and runs safe Kubernetes upgrade rollouts across the fleet.",
    settings_type=Settings,
    setup=setup,
)
