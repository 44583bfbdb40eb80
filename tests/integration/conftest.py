"""Integration fixtures: the five services as real OS processes against a test nats-server."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from integration_support import service_log, start_service

from flotilla_client.natsserver import NatsServer
from flotilla_contracts.subjects import Service


@pytest.fixture
def five_services(nats_server: NatsServer, tmp_path: Path) -> Iterator[dict[Service, subprocess.Popen[bytes]]]:
    """All five services running; on teardown each gets SIGTERM and must exit 0 within 15 s."""
    procs = {service: start_service(service, nats_server.url, tmp_path) for service in Service}
    try:
        yield procs
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 15
        codes = {}
        for service, proc in procs.items():
            try:
                codes[service] = proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[service] = proc.wait()
        logs = {s.value: service_log(tmp_path, s) for s in Service}
        assert all(code == 0 for code in codes.values()), f"exit codes {codes}; logs: {logs}"
