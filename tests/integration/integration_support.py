"""Importable helpers for integration tests (conftest.py cannot be imported by name under importlib mode)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from nats.aio.client import Client
from nats.aio.msg import Msg

from flotilla_client import localfleet
from flotilla_contracts.streams import FLEET_EVENTS
from flotilla_contracts.subjects import Service


def start_service(service: Service, nats_url: str, state: Path, **settings: str) -> subprocess.Popen[bytes]:
    """One service as its own process (the same launcher `flotilla up` uses); log at state/logs/<service>.log."""
    _, process = localfleet.start_service(service, state, nats_url, settings)
    return process


def service_log(state: Path, service: Service) -> str:
    return localfleet.log_path(state, service.value).read_text()[-3000:]


async def fleet_events(nc: Client, within_s: float = 10.0) -> list[Msg]:
    """Every FLEET_EVENTS message, in stream order (an ephemeral ordered consumer: nothing left on the server)."""
    js = nc.jetstream()
    info = await js.stream_info(FLEET_EVENTS.name)
    sub = await js.subscribe("fleet.v1.evt.>", ordered_consumer=True, stream=FLEET_EVENTS.name)
    try:
        return [await sub.next_msg(within_s) for _ in range(info.state.messages)]
    finally:
        await sub.unsubscribe()
