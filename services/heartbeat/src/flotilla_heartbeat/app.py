"""Wiring of the heartbeat service: its settings, its commands and what it runs in the background."""

from __future__ import annotations

from flotilla_contracts.subjects import Service
from flotilla_heartbeat import __version__
from flotilla_runtime.service import ServiceApp, ServiceSpec
from flotilla_runtime.settings import ServiceSettings


class Settings(ServiceSettings, kw_only=True, frozen=True):
    """`FLOTILLA_HEARTBEAT_*` environment variables (see flotilla_runtime.settings for the shared ones)."""


async def setup(app: ServiceApp[Settings]) -> None:
    """Register handlers on the app; the runtime already serves `info` and service discovery."""
    app.log.debug("heartbeat wired", extra={"commands": [ep.verb for ep in app.router.endpoints]})


SPEC = ServiceSpec(
    service=Service.HEARTBEAT,
    version=__version__,
    description="Turns node heartbeats into node and cluster health; publishes only transitions.",
    settings_type=Settings,
    setup=setup,
)
