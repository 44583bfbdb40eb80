"""Trace context across the database thread: a span per event there, its events in its trace; links to a trace."""

import json
from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider

from flotilla_contracts.envelope import Message
from flotilla_runtime import telemetry
from flotilla_runtime.store import Store, SyncTx

PARENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"
CARRIED = {"traceparent": f"00-{PARENT_TRACE}-{PARENT_SPAN}-01"}


class Happened(Message, frozen=True, kw_only=True):
    SCHEMA = "test.Happened"
    what: str


def trace_and_parent(headers: dict[str, str]) -> tuple[str, str]:
    _version, trace_id, span_id, _flags = headers["traceparent"].split("-")
    return trace_id, span_id


async def test_an_event_handled_in_the_database_thread_emits_in_the_events_trace(tmp_path: Path) -> None:
    telemetry.setup_tracing("test", "0", "t1")  # spans are recorded (no exporter): a child has a span id of its own
    store = await Store.open(tmp_path / "s.db", [])

    def handle(tx: SyncTx) -> None:
        with telemetry.consumer_span("svc handle test.Happened", CARRIED, "fleet.v1.evt.x"), tx.in_current_trace():
            tx.emit("fleet.v1.evt.caused", Happened(what="caused"), msg_id="caused")
        tx.emit("fleet.v1.evt.after", Happened(what="after"), msg_id="after")

    await store.run(handle)
    headers = {row["msg_id"]: json.loads(row["headers"]) for row in await store.pending_outbox(10)}
    trace_id, parent = trace_and_parent(headers["caused"])
    assert trace_id == PARENT_TRACE, "what the event caused is in the event's trace"
    assert parent != PARENT_SPAN, "below the consumer's span, not beside it"
    assert "traceparent" not in headers["after"], "after the block: the caller's context again (here none)"
    await store.close()


def test_a_later_command_links_to_the_trace_it_acts_on() -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("upgrade-orchestrator upgrade.pause") as span:
        assert telemetry.link(span, CARRIED, "rollout start")
        assert not telemetry.link(span, {}, "rollout start"), "no trace kept: nothing to link"
    links = list(span.links)  # type: ignore[attr-defined]
    assert [format(link.context.trace_id, "032x") for link in links] == [PARENT_TRACE]
    assert links[0].attributes == {"flotilla.link": "rollout start"}
