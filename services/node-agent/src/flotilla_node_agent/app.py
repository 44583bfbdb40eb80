"""Wiring of the node-agent service: its settings, its commands and what it runs in the background."""

from __future__ import annotations

from flotilla_contracts.subjects import Service
from flotilla_node_agent import __version__
from flotilla_runtime.service import ServiceApp, ServiceSpec
from flotilla_runtime.settings import ServiceSettings


class Settings(ServiceSettings, kw_only=True, frozen=True):
    """`FLOTILLA_NODE_AGENT_*` environment variables (see flotilla_runtime.settings for the shared ones)."""


async def setup(app: ServiceApp[Settings]) -> None:
    """Register handlers on the app; the runtime already serves `info` and service discovery."""
    app.log.debug("node-agent wired", extra={"commands": [ep.verb for ep in app.router.endpoints]})


SPEC = ServiceSpec(
    service=Service.NODE_AGENT,
    version=__version__,
    description="Runs on every node: heartbeats, node reports and the node-level upgrade steps.",
    settings_type=Settings,
    setup=setup,
)
