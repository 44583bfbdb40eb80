"""Whole traces in a real Jaeger: `flotilla up --jaeger`, a join, a sim and a rollout with an approval, all through
the CLI; then Jaeger's HTTP query API (/api/traces/{id}, /api/services) is asked what it holds.

Jaeger all-in-one is built from the Go module proxy by `make peer-bins` (tools/peers/go.mod). Only `up` is told
where to trace (--jaeger); `flotilla sim` and every later command find it in run.json. The claims:
- a join's trace reaches registration, heartbeat and scheduler;
- one trace of `upgrade start` holds spans of the CLI, the orchestrator, every node-agent step of every node (both
  waves, the second started by an approval) and, below each step, the orchestrator's consumer of its report;
- the approval (a later command) is a trace of its own with a link to the rollout's start trace;
- every rollout event carries a trace context (but the lease loop's first advance), every health change too;
  heartbeats stay untraced.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest
from integration_support import fleet_events

from flotilla_client import procs, runfile
from flotilla_client.natsserver import free_port
from flotilla_runtime import logins
from flotilla_testkit import eventually_sync

pytestmark = pytest.mark.integration
FLOTILLA = str(Path(sys.executable).parent / "flotilla")
TRACE_LINE = re.compile(r"^trace ([0-9a-f]{32})", re.MULTILINE)
STARTED = re.compile(r"^rollout (r-[0-9a-f]+) started", re.MULTILINE)
T = TypeVar("T")


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    span_id: str
    parents: frozenset[str]  # CHILD_OF span ids
    links: frozenset[str]  # FOLLOWS_FROM trace ids (span links)
    tags: dict[str, Any]


@dataclass(frozen=True)
class Fleet:
    state: Path
    env: dict[str, str]
    jaeger: str  # the UI / query API address `up --jaeger` printed
    url: str  # the admin NATS URL


def get_json(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def spans_of(jaeger: str, trace_id: str) -> list[Span]:
    found = get_json(f"{jaeger}/api/traces/{trace_id}")
    if not found or not found.get("data"):
        return []
    (trace,) = found["data"]
    processes = {key: p["serviceName"] for key, p in trace["processes"].items()}
    return [
        Span(
            service=processes[span["processID"]],
            name=span["operationName"],
            span_id=span["spanID"],
            parents=frozenset(r["spanID"] for r in span.get("references") or [] if r["refType"] == "CHILD_OF"),
            links=frozenset(r["traceID"] for r in span.get("references") or [] if r["refType"] == "FOLLOWS_FROM"),
            tags={tag["key"]: tag["value"] for tag in span.get("tags") or []},
        )
        for span in trace["spans"]
    ]


def eventually(what: str, check: Callable[[], T | None], within_s: float = 60.0) -> T:
    """flotilla_testkit.eventually_sync, `what` first as this test reads: fails naming `what` and the last value."""
    return eventually_sync(check, what, timeout_s=within_s, every_s=0.3)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    nats_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOTILLA_", "OTEL_"))}
    state = tmp_path_factory.mktemp("jaeger") / ".flotilla"
    up_env = {**env, "OTEL_BSP_SCHEDULE_DELAY": "200"}  # `up` alone is told; the rest read run.json
    up = subprocess.run([FLOTILLA, "--state-dir", str(state), "up", "--port", str(nats_port), "--monitor-port", "0",
                         "--jaeger"], capture_output=True, text=True, env=up_env, timeout=120)  # fmt: skip
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        info = runfile.load(state)
        assert info is not None and info.jaeger is not None
        assert f"Jaeger UI     {info.jaeger.ui_url}" in up.stdout, "up prints the UI address"
        yield Fleet(state, env, info.jaeger.ui_url, info.nats.url)
    finally:
        subprocess.run([FLOTILLA, "--state-dir", str(state), "down"], capture_output=True, env=env, timeout=60)


def flotilla(fleet: Fleet, *args: str, trace: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([FLOTILLA, "--state-dir", str(fleet.state), *(["--trace"] if trace else []), *args],
                          capture_output=True, text=True, env=fleet.env, timeout=120)  # fmt: skip
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done


def trace_of(done: subprocess.CompletedProcess[str]) -> str:
    found = TRACE_LINE.findall(done.stderr)
    assert found, f"--trace printed no trace id: {done.stderr}"
    return found[-1]


def rollout_state(fleet: Fleet) -> str:
    rollouts = json.loads(flotilla(fleet, "upgrade", "list", "-o", "json", trace=False).stdout)
    return str(rollouts[0]["state"]) if rollouts else ""


async def all_events(url: str) -> list[tuple[str, dict[str, Any], dict[str, str]]]:
    """(schema, body, headers) of every event in FLEET_EVENTS and FLEET_REPORTS."""
    nc = await logins.connect(url)
    try:
        found = []
        for msg in await fleet_events(nc):
            body = msgspec.json.decode(msg.data)
            headers = dict(msg.headers or {})
            found.append((headers.get("Flotilla-Schema", "").split("/")[0], body, headers))
        return found
    finally:
        await nc.close()


def test_a_join_and_a_rollout_are_each_one_whole_trace_in_jaeger(fleet: Fleet) -> None:
    token = flotilla(fleet, "token", "create", "--auto-approve", trace=False).stdout.strip()
    join = {
        "request_id": "jaeger-join-1",
        "token": token,
        "identity": {"uid": "jaeger-uid", "name": "jaeger-cluster", "kubernetes_version": "v1.29.6"},
    }
    join_trace = trace_of(flotilla(fleet, "publish", "fleet.v1.cmd.registration.join", json.dumps(join), "--request"))
    wanted = {"flotilla-cli", "registration", "heartbeat", "scheduler"}
    eventually(
        f"the join's trace reaches {sorted(wanted)}",
        lambda: wanted <= {s.service for s in spans_of(fleet.jaeger, join_trace)},
    )

    # Two clusters of two nodes, told nothing about tracing: wave 0 (one cluster), then wave 1 after an approval.
    flotilla(fleet, "sim", "--clusters", "2", "--nodes", "2", "--prefix", "jg", "--step-seconds", "0.05", "--wait",
             trace=False)  # fmt: skip
    spec = ["--to", "v1.30.4", "-l", "env=sim", "--canary", "1", "--approve-before", "1"]
    eventually(
        "the orchestrator sees the sim's 4 nodes",
        lambda: (
            json.loads(flotilla(fleet, "upgrade", "plan", *spec, "-o", "json", trace=False).stdout)["nodes_total"] == 4
        ),
    )
    started = flotilla(fleet, "upgrade", "start", *spec)
    start_trace, rollout_id = trace_of(started), STARTED.findall(started.stdout)[0]
    eventually("wave 0 done, waiting for approval", lambda: rollout_state(fleet) == "AwaitingApproval", 120)
    approve_trace = trace_of(flotilla(fleet, "upgrade", "approve", rollout_id, "--wave", "1"))
    eventually("the rollout succeeded", lambda: rollout_state(fleet) == "Succeeded", 120)

    events = asyncio.run(all_events(fleet.url))
    messages = [(schema, b, h) for schema, b, h in events if isinstance(b, dict) and b.get("rollout_id") == rollout_id]
    health = [
        h for schema, _, h in events if schema in ("heartbeat.ClusterHealthChanged", "heartbeat.NodeHealthChanged")
    ]
    assert health and all("traceparent" in h for h in health), "health changes start a trace of their own"
    reported = {(b["node_id"], b["step"]) for schema, b, _ in messages if schema == "agent.NodeStepReported"}
    assert len({node for node, _ in reported}) == 4, reported

    def whole() -> list[Span] | None:
        """The start trace once it holds every reported step and, below each step, the orchestrator's consumer
        of its report (spans reach Jaeger from each process in its own batches: wait for both)."""
        spans = spans_of(fleet.jaeger, start_trace)
        steps = [s for s in spans if s.service == "node-agent"]
        seen = {(s.tags.get("flotilla.node_id"), s.name.removeprefix("node-agent ")) for s in steps}
        consumed = {
            p for s in spans if s.name == "upgrade-orchestrator handle agent.NodeStepReported" for p in s.parents
        }
        return spans if reported <= seen and all(s.span_id in consumed for s in steps) else None

    spans = eventually("every reported step of every node, each with its report's consumer below, in one trace", whole)
    services = {s.service for s in spans}
    assert {"flotilla-cli", "upgrade-orchestrator", "node-agent"} <= services, services

    def approve_links() -> bool:
        served = [s for s in spans_of(fleet.jaeger, approve_trace) if s.service == "upgrade-orchestrator"]
        return any(s.name.endswith("upgrade.approve") and start_trace in s.links for s in served)

    eventually("the approval's trace links to the rollout's start trace", approve_links)

    # Every rollout event carries a trace context, those of the first advance after the lease is taken included.
    untraced = sorted(
        (schema, b.get("from", ""), b.get("to", "")) for schema, b, h in messages if "traceparent" not in h
    )
    assert untraced == [], untraced
    in_start = sum(1 for _, _, h in messages if h.get("traceparent", "").split("-")[1:2] == [start_trace])
    assert in_start >= len(messages) // 2, f"{in_start} of {len(messages)} rollout events in the start trace"

    operations = get_json(f"{fleet.jaeger}/api/services/heartbeat/operations")["data"]
    assert not [name for name in operations if "fleet.v1.hb" in name or "ingest" in name], operations
    assert set(get_json(f"{fleet.jaeger}/api/services")["data"]) >= wanted | {"upgrade-orchestrator", "node-agent"}


def test_down_stops_jaeger_last(fleet: Fleet) -> None:
    """`down` stops the Jaeger `up --jaeger` started, after the services (their last spans go to it)."""
    info = runfile.load(fleet.state)
    assert info is not None and info.jaeger is not None
    down = subprocess.run([FLOTILLA, "--state-dir", str(fleet.state), "down"],
                          capture_output=True, text=True, env=fleet.env, timeout=60)  # fmt: skip
    assert down.returncode == 0, down.stderr
    stopped = [line.split()[0] for line in down.stdout.splitlines() if " pid " in line]
    assert stopped[-1] == "jaeger" and "upgrade-orchestrator" in stopped, down.stdout
    assert not procs.alive(info.jaeger.pid, info.jaeger.config)
