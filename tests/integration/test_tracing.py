"""Tracing settings travel: OTEL_* given to `flotilla up` alone reach the services and later CLI commands.

An OTLP/HTTP receiver stands in for a collector here (it only counts spans by service). Whole traces, through a
real Jaeger and its query API, are tests/e2e/test_tracing_jaeger.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections import defaultdict
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from flotilla_client.natsserver import free_port
from flotilla_testkit import ConditionNotMet, eventually_sync

pytestmark = pytest.mark.integration
FLOTILLA = str(Path(sys.executable).parent / "flotilla")
TRACE_LINE = re.compile(r"^trace ([0-9a-f]{32})", re.MULTILINE)


class Receiver:
    """Collects exported spans: trace id -> [(service.name, span name)]."""

    def __init__(self) -> None:
        self.spans: dict[str, list[tuple[str, str]]] = defaultdict(list)
        self.lock = threading.Lock()

    def services_in(self, trace_id: str) -> set[str]:
        with self.lock:
            return {service for service, _ in self.spans.get(trace_id, [])}


def serve(receiver: Receiver, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            with receiver.lock:
                for resource_spans in request.resource_spans:
                    attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                    for scope in resource_spans.scope_spans:
                        for span in scope.spans:
                            receiver.spans[span.trace_id.hex()].append((attrs.get("service.name", "?"), span.name))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Receiver, Path, dict[str, str]]]:
    receiver, otlp_port, nats_port = Receiver(), free_port(), free_port()
    server = serve(receiver, otlp_port)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOTILLA_", "OTEL_"))}
    up_env = {**env, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}", "OTEL_BSP_SCHEDULE_DELAY": "200"}
    state = tmp_path_factory.mktemp("traced") / ".flotilla"
    subprocess.run([FLOTILLA, "--state-dir", str(state), "up", "--port", str(nats_port), "--monitor-port", "0"],
                   check=True, capture_output=True, env=up_env, timeout=60)  # fmt: skip
    try:
        yield receiver, state, env  # later commands run without any OTEL_* of their own
    finally:
        subprocess.run([FLOTILLA, "--state-dir", str(state), "down"], capture_output=True, env=env, timeout=60)
        server.shutdown()


def trace_of(done: subprocess.CompletedProcess[str]) -> str:
    found = TRACE_LINE.findall(done.stderr)
    assert found, f"--trace printed no trace id: {done.stderr}"
    return found[-1]


def eventually_services(receiver: Receiver, trace_id: str, wanted: set[str], within_s: float = 30) -> set[str]:
    """The services with spans in the trace once `wanted` are all there, else the last seen (the caller asserts)."""
    try:
        return eventually_sync(
            lambda: receiver.services_in(trace_id),
            f"spans of {sorted(wanted)} in trace {trace_id}",
            timeout_s=within_s,
            every_s=0.3,
            until=lambda seen: wanted <= seen,
        )
    except ConditionNotMet as short:
        return set(short.last) if isinstance(short.last, set) else set()


def test_a_later_command_traces_where_up_was_told_to(traced: tuple[Receiver, Path, dict[str, str]]) -> None:
    receiver, state, env = traced
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in env
    done = subprocess.run([FLOTILLA, "--state-dir", str(state), "--trace", "token", "create", "--auto-approve"],
                          capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    wanted = {"flotilla-cli", "registration"}
    assert eventually_services(receiver, trace_of(done), wanted) >= wanted, "the CLI and the service it asked"
