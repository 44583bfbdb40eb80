"""Integration fixtures: the five services as real OS processes against a test nats-server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flotilla_client.natsserver import NatsServer
from flotilla_contracts.subjects import Service
from flotilla_runtime.settings import env_prefix


def module_of(service: Service) -> str:
    return "flotilla_" + service.value.replace("-", "_")


def start_service(service: Service, nats_url: str, state: Path, **settings: str) -> subprocess.Popen[bytes]:
    prefix = env_prefix(service.value)
    env = {
        **os.environ,
        "FLOTILLA_NATS_URL": nats_url,
        f"{prefix}STATE_DIR": str(state / service.value),
        f"{prefix}LOG_FORMAT": "json",
        **{prefix + key.upper(): value for key, value in settings.items()},
    }
    log = open(state / f"{service.value}.log", "ab")  # noqa: SIM115 - the child owns it
    return subprocess.Popen([sys.executable, "-m", module_of(service)], env=env, stdout=log, stderr=subprocess.STDOUT)


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
        logs = {s.value: (tmp_path / f"{s.value}.log").read_text()[-2000:] for s in Service}
        assert all(code == 0 for code in codes.values()), f"exit codes {codes}; logs: {logs}"
