"""Tracing end to end: an OTLP/HTTP receiver, the services exporting to it, a join and a rollout through the CLI.

The join's trace links the CLI, registration and the events it publishes; the rollout's trace links the CLI,
the upgrade-orchestrator, the node-agents that run its steps and the events all of them publish. Heartbeats
stay untraced.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import nats
import pytest
from integration_support import fleet_events
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from flotilla_client import runfile
from flotilla_client.natsserver import free_port

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

    def all_span_names(self) -> list[str]:
        with self.lock:
            return [name for spans in self.spans.values() for _, name in spans]


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
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Receiver, Path, dict[str, str], str]]:
    receiver, otlp_port, nats_port = Receiver(), free_port(), free_port()
    server = serve(receiver, otlp_port)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOTILLA_", "OTEL_"))}
    env.update(OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{otlp_port}", OTEL_BSP_SCHEDULE_DELAY="200")
    state = tmp_path_factory.mktemp("traced") / ".flotilla"
    subprocess.run([FLOTILLA, "--state-dir", str(state), "up", "--port", str(nats_port), "--monitor-port", "0"],
                   check=True, capture_output=True, env=env, timeout=60)  # fmt: skip
    try:
        yield receiver, state, env, runfile.server_url(state) or ""  # the admin URL, with its credentials
    finally:
        subprocess.run([FLOTILLA, "--state-dir", str(state), "down"], capture_output=True, env=env, timeout=60)
        server.shutdown()


def flotilla(state: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([FLOTILLA, "--state-dir", str(state), "--trace", *args],
                          capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done


def plan_sees_nodes(state: Path, env: dict[str, str], nodes: int, within_s: float = 60) -> None:
    """Until a dry run (untraced) of the rollout below is feasible with `nodes` nodes."""
    args = ["upgrade", "plan", "--to", "v1.30.4", "-l", "env=sim", "-o", "json"]
    deadline = time.monotonic() + within_s
    while True:
        done = subprocess.run([FLOTILLA, "--state-dir", str(state), *args],
                              capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
        if done.returncode == 0 and json.loads(done.stdout)["nodes_total"] == nodes:
            return
        assert time.monotonic() < deadline, f"the plan never saw {nodes} nodes: {done.stdout} {done.stderr}"
        time.sleep(0.5)


def trace_of(done: subprocess.CompletedProcess[str]) -> str:
    found = TRACE_LINE.findall(done.stderr)
    assert found, f"--trace printed no trace id: {done.stderr}"
    return found[-1]


def eventually_services(receiver: Receiver, trace_id: str, wanted: set[str], within_s: float = 30) -> set[str]:
    deadline = time.monotonic() + within_s
    while not wanted <= (seen := receiver.services_in(trace_id)) and time.monotonic() < deadline:
        time.sleep(0.3)
    return seen


async def traces_on_events(url: str, schemas: set[str]) -> dict[str, set[str]]:
    """schema -> trace ids found in the traceparent of FLEET_EVENTS messages of that schema."""
    nc = await nats.connect(url)
    found: dict[str, set[str]] = defaultdict(set)
    for msg in await fleet_events(nc):
        headers = msg.headers or {}
        schema = headers.get("Flotilla-Schema", "").split("/")[0]
        if schema in schemas and "traceparent" in headers:
            found[schema].add(headers["traceparent"].split("-")[1])
    await nc.close()
    return found


def test_join_and_rollout_are_each_one_trace_across_services(
    traced: tuple[Receiver, Path, dict[str, str], str],
) -> None:
    receiver, state, env, url = traced
    token = flotilla(state, env, "token", "create", "--auto-approve").stdout.strip()
    join = {
        "request_id": "traced-join-1",
        "token": token,
        "identity": {"uid": "traced-uid", "name": "traced-cluster", "kubernetes_version": "v1.29.6"},
    }
    joined = flotilla(state, env, "publish", "fleet.v1.cmd.registration.join", json.dumps(join), "--request")
    join_trace = trace_of(joined)
    assert eventually_services(receiver, join_trace, {"flotilla-cli", "registration"}) >= {
        "flotilla-cli",
        "registration",
    }

    flotilla(state, env, "sim", "--clusters", "1", "--nodes", "2", "--prefix", "tr", "--step-seconds", "0.05")
    plan_sees_nodes(state, env, 2)  # the orchestrator knows the sim's nodes and health: the rollout can start
    started = flotilla(state, env, "upgrade", "start", "--to", "v1.30.4", "-l", "env=sim")
    rollout_trace = trace_of(started)
    deadline = time.monotonic() + 90
    while json.loads(flotilla(state, env, "upgrade", "list", "-o", "json").stdout)[0]["state"] != "Succeeded":
        assert time.monotonic() < deadline, "the traced rollout did not finish"
        time.sleep(1)
    wanted = {"flotilla-cli", "upgrade-orchestrator", "node-agent"}
    assert eventually_services(receiver, rollout_trace, wanted) >= wanted

    on_events = asyncio.run(
        traces_on_events(url, {"registration.ClusterJoinRequested", "upgrade.RolloutStarted", "agent.NodeStepReported"})
    )
    assert join_trace in on_events["registration.ClusterJoinRequested"], "the join's events carry its trace"
    assert rollout_trace in on_events["upgrade.RolloutStarted"]
    assert rollout_trace in on_events["agent.NodeStepReported"], "the agents' reports carry the rollout's trace"
    assert not [name for name in receiver.all_span_names() if "fleet.v1.hb" in name or "heartbeat ingest" in name]
