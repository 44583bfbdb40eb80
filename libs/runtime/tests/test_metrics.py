"""Prometheus metrics: the text format, and a real in-process service whose /metrics move with its work."""

import asyncio
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client

from flotilla_client.natsserver import NatsServer, free_port
from flotilla_contracts import catalogue, subjects
from flotilla_contracts.envelope import H_SCHEMA, Message, schema_id
from flotilla_contracts.errors import ErrorCode
from flotilla_contracts.subjects import Service
from flotilla_contracts.v1.registration_events import NodeRemoved
from flotilla_runtime.commands import CommandContext
from flotilla_runtime.consumers import EventMeta
from flotilla_runtime.errors import RequestError
from flotilla_runtime.metrics import Family, Registry, Sample, render
from flotilla_runtime.service import ServiceApp, ServiceSpec, run
from flotilla_runtime.settings import ServiceSettings
from flotilla_runtime.store import Tx
from flotilla_testkit import eventually

# --- the exposition format -------------------------------------------------------------------------------------


def parse(text: str) -> dict[str, float]:
    """`name{labels}` -> value for every sample line; also checks each family has HELP and TYPE first."""
    samples: dict[str, float] = {}
    typed: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            typed.add(line.split()[2])
        elif line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            name = series.split("{", 1)[0]
            assert any(name == t or name.startswith(t + "_") for t in typed), f"{name} has no TYPE line before it"
            samples[series] = float(value.replace("+Inf", "inf"))
    return samples


def test_render_escapes_labels_and_help() -> None:
    text = render([Family("x_total", "counter", 'a\\b\nc "q"', [Sample({"path": 'a"b\\c\nd'}, 2)])])
    assert text == '# HELP x_total a\\\\b\\nc "q"\n# TYPE x_total counter\nx_total{path="a\\"b\\\\c\\nd"} 2\n'


def test_values_are_formatted_for_prometheus() -> None:
    text = render([Family("g", "gauge", "h", [Sample({"k": str(v)}, v) for v in (1.0, 0.25, math.inf, math.nan)])])
    assert [line.rsplit(" ", 1)[1] for line in text.splitlines()[2:]] == ["1", "0.25", "+Inf", "NaN"]


def test_histogram_buckets_are_cumulative_with_le_semantics() -> None:
    registry = Registry()
    h = registry.histogram("lat_seconds", "latency", ["op"], buckets=[0.1, 1])
    for value in (0.05, 0.1, 0.5, 3):
        h.observe(value, op="get")
    samples = parse(asyncio.run(registry.render()))
    assert samples['lat_seconds_bucket{op="get",le="0.1"}'] == 2  # 0.1 counts in le="0.1"
    assert samples['lat_seconds_bucket{op="get",le="1"}'] == 3
    assert samples['lat_seconds_bucket{op="get",le="+Inf"}'] == 4
    assert samples['lat_seconds_count{op="get"}'] == 4
    assert samples['lat_seconds_sum{op="get"}'] == pytest.approx(3.65)


def test_registry_refuses_clashes_and_bad_names() -> None:
    registry = Registry()
    counter = registry.counter("jobs_total", "jobs", ["kind"])
    with pytest.raises(ValueError, match="registered twice"):
        registry.gauge_fn("jobs_total", "again", lambda: 1)
    with pytest.raises(ValueError, match="not a valid Prometheus metric name"):
        registry.gauge("bad-name", "dash")
    with pytest.raises(ValueError, match="takes labels"):
        counter.inc(kind="a", extra="b")
    with pytest.raises(ValueError, match="only goes up"):
        counter.inc(-1, kind="a")


def test_callback_metrics_are_read_at_scrape_time() -> None:
    registry = Registry()
    seen = {"n": 1}
    registry.gauge_fn("tracked", "tracked things", lambda: seen["n"])
    assert parse(asyncio.run(registry.render()))["tracked"] == 1
    seen["n"] = 5
    assert parse(asyncio.run(registry.render()))["tracked"] == 5


# --- a real service ----------------------------------------------------------------------------------------------


class Remove(Message, frozen=True, kw_only=True):
    SCHEMA = "test.Remove"
    nodes: list[str]


class Removed(Message, frozen=True, kw_only=True):
    SCHEMA = "test.Removed"
    count: int


async def setup(app: ServiceApp[ServiceSettings]) -> None:
    handled: list[str] = []
    app.metrics.gauge_fn("test_nodes_seen", "Nodes whose removal this test service consumed.", lambda: len(handled))

    @app.router.command("test.remove", Remove, Removed)
    async def remove(request: Remove, _ctx: CommandContext) -> Removed:
        if not request.nodes:
            raise RequestError(ErrorCode.INVALID_FIELD, "nodes: name at least one node")
        async with app.store.transaction() as tx:
            for node in request.nodes:
                event = NodeRemoved(cluster_id="c1", node_id=node, node_name=node, occurred_at=datetime.now(UTC))
                await tx.emit(catalogue.subject_for(NodeRemoved, cluster_id="c1", node_id=node), event)
        return Removed(count=len(request.nodes))

    async def on_removed(event: NodeRemoved, _tx: Tx, _meta: EventMeta) -> None:
        handled.append(event.node_id)

    # A read model rebuilt per state file takes a new durable (the epoch); its metrics keep the stable name.
    app.consume("removals", ["fleet.v1.evt.node.>"], {NodeRemoved: on_removed}, epoch="e5f3a")


SPEC = ServiceSpec(
    service=Service.SCHEDULER, version="9.9.9", description="metrics test", settings_type=ServiceSettings, setup=setup
)


@dataclass
class Running:
    stop: asyncio.Event
    task: asyncio.Task[None]
    port: int


@pytest.fixture
async def service(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[Running]:
    port = free_port()
    settings = ServiceSettings(
        nats_url=nats_server.url, state_dir=str(tmp_path / "svc"), instance_id="m1", http_port=port
    )
    stop = asyncio.Event()
    task = asyncio.create_task(run(SPEC, settings, stop))
    yield Running(stop, task, port)
    stop.set()
    await asyncio.wait_for(task, 15)


async def http_get(port: int, path: str) -> tuple[int, dict[str, str], str]:
    reader, writer = await eventually(
        lambda: asyncio.open_connection("127.0.0.1", port), f"a listener on {port}", timeout_s=5, retrying=(OSError,)
    )
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    raw = await reader.read()
    writer.close()
    head, _, body = raw.decode().partition("\r\n\r\n")
    status_line, *header_lines = head.split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in header_lines)}
    return int(status_line.split()[1]), headers, body


async def command(nc: Client, verb: str, body: bytes) -> dict[str, object]:
    async def answered() -> dict[str, object]:
        reply = await nc.request(subjects.command(Service.SCHEDULER, verb), body, timeout=1)
        decoded: dict[str, object] = msgspec.json.decode(reply.data)
        return decoded

    # Exception: no responders or a timeout while the service is not subscribed yet.
    return await eventually(answered, f"a reply to {verb}", timeout_s=30, every_s=0.1, retrying=(Exception,))


async def scrape_until(port: int, series: str, at_least: float) -> dict[str, float]:
    async def reached() -> dict[str, float] | None:
        status, _, body = await http_get(port, "/metrics")
        assert status == 200
        samples = parse(body)
        return samples if samples.get(series, 0) >= at_least else None

    return await eventually(reached, f"{series} >= {at_least}", timeout_s=10)


async def test_metrics_move_with_commands_events_and_the_outbox(service: Running, nc: Client) -> None:
    remove = 'subject="fleet.v1.cmd.scheduler.test.remove"'
    assert (await command(nc, "test.remove", b'{"nodes": ["n1", "n2", "n3"]}'))["ok"] is True
    assert (await command(nc, "test.remove", b'{"nodes": []}'))["ok"] is False  # refused by the handler
    assert (await command(nc, "test.remove", b"{oops"))["ok"] is False  # refused before the handler

    # Counters move after commit (events) and after JetStream's ack (outbox): wait for those, not the handler.
    await scrape_until(service.port, 'flotilla_events_total{consumer="scheduler-removals",outcome="handled"}', 3)
    samples = await scrape_until(service.port, "flotilla_outbox_published_total", 3)
    assert samples["test_nodes_seen"] == 3
    assert samples[f"flotilla_commands_total{{{remove}}}"] == 3
    assert samples[f"flotilla_command_errors_total{{{remove}}}"] == 2
    assert samples[f"flotilla_command_handler_duration_seconds_count{{{remove}}}"] == 2  # malformed never ran it
    assert samples[f'flotilla_command_handler_duration_seconds_bucket{{{remove},le="+Inf"}}'] == 2
    assert samples[f"flotilla_command_processing_seconds_total{{{remove}}}"] > 0
    assert samples['flotilla_events_total{consumer="scheduler-removals",outcome="handled"}'] == 3
    handler = 'consumer="scheduler-removals",schema="registration.NodeRemoved/v1"'
    assert samples[f"flotilla_event_handler_duration_seconds_count{{{handler}}}"] == 3
    assert samples["flotilla_outbox_published_total"] == 3
    assert samples["flotilla_outbox_pending_events"] == 0
    assert samples["flotilla_outbox_oldest_pending_age_seconds"] == 0
    assert samples['flotilla_service_info{service="scheduler",version="9.9.9",instance_id="m1"}'] == 1
    assert samples["flotilla_service_ready"] == 1


async def test_metrics_content_type_and_probes_unchanged(service: Running, nc: Client) -> None:
    await command(nc, "info", b"{}")  # serving
    status, headers, _ = await http_get(service.port, "/metrics")
    assert status == 200
    assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert (await http_get(service.port, "/livez"))[:1] == (200,)
    assert (await http_get(service.port, "/readyz"))[:1] == (200,)
    status, _, body = await http_get(service.port, "/nope")
    assert status == 404 and "/metrics" in body


async def test_dead_letters_by_reason_under_the_stable_consumer_name(service: Running, nc: Client) -> None:
    await command(nc, "info", b"{}")  # serving: the stream exists
    js = nc.jetstream()
    headers = {H_SCHEMA: schema_id(NodeRemoved)}
    await js.publish("fleet.v1.evt.node.c1.n9.removed", b'{"cluster_id": 7}', headers=headers)  # wrong type
    await js.publish("fleet.v1.evt.node.c1.n8.removed", b"[1, 2]", headers=headers)  # not an object

    stable = 'consumer="scheduler-removals"'
    samples = await scrape_until(service.port, f'flotilla_events_total{{{stable},outcome="dead_lettered"}}', 2)
    assert samples[f'flotilla_dead_letters_total{{{stable},reason="invalid_field"}}'] == 2
    assert not [series for series in samples if "e5f3a" in series]  # the epoch never reaches a label
    assert (await js.consumer_info("FLEET_EVENTS", "scheduler-removals-e5f3a")).config.durable_name
