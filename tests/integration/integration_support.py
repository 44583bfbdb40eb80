"""Importable helpers for integration tests (conftest.py cannot be imported by name under importlib mode)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from flotilla_client import localfleet
from flotilla_contracts.subjects import Service


def start_service(service: Service, nats_url: str, state: Path, **settings: str) -> subprocess.Popen[bytes]:
    """One service as its own process (the same launcher `flotilla up` uses); log at state/logs/<service>.log."""
    _, process = localfleet.start_service(service, state, nats_url, settings)
    return process


def service_log(state: Path, service: Service) -> str:
    return localfleet.log_path(state, service.value).read_text()[-3000:]
