"""Wiring of the registration service: its settings, its commands and what it runs in the background."""

from __future__ import annotations

from flotilla_contracts.subjects import Service
from flotilla_registration import __version__
from flotilla_runtime.service import ServiceApp, ServiceSpec
from flotilla_runtime.settings import ServiceSettings


class Settings(ServiceSettings, kw_only=True, frozen=True):
    """`FLOTILLA_REGISTRATION_*` environment variables (see flotilla_runtime.settings for the shared ones)."""


async def setup(app: ServiceApp[Settings]) -> None:
    """Register handlers on the app; the runtime already serves `info` and service discovery."""
    app.log.debug("registration wired", extra={"commands": [ep.verb for ep in app.router.endpoints]})


SPEC = ServiceSpec(
    service=Service.REGISTRATION,
    version=__version__,
    description="Join tokens, cluster approval and the fleet inventory of clusters and nodes.",
    settings_type=Settings,
    setup=setup,
)
