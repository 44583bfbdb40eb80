"""OpenTelemetry tracing: OTLP/HTTP export when configured, parent-based sampling, W3C context in NATS headers."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_propagator = TraceContextTextMapPropagator()
_provider: TracerProvider | None = None
_consumer_tracer: trace.Tracer | None = None


def setup_tracing(service: str, version: str, instance_id: str, sample_ratio: float = 1.0) -> TracerProvider:
    """Install the global tracer provider (once per process); spans are exported only when
    OTEL_EXPORTER_OTLP_ENDPOINT is set."""
    global _provider
    if _provider is not None:
        return _provider
    resource = Resource.create(
        {"service.name": service, "service.version": version, "service.instance.id": instance_id}
    )
    provider = TracerProvider(resource=resource, sampler=ParentBased(TraceIdRatioBased(sample_ratio)))
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _provider = provider
    return provider


def shutdown_tracing() -> None:
    """Flush and stop the exporter (on graceful stop)."""
    if _provider is not None:
        _provider.shutdown()


def flush_tracing() -> None:
    """Export what is buffered now (a CLI command ends; the process may send more commands)."""
    if _provider is not None:
        _provider.force_flush()


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def inject(headers: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Add traceparent/tracestate of the current span to outgoing headers."""
    _propagator.inject(headers)
    return headers


def current_trace_id() -> str:
    """Hex trace id of the current span, or empty when there is none."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


def current_span() -> Span:
    """The span current in this thread (a non-recording one when there is none)."""
    return trace.get_current_span()


def link(span: Span, headers: Mapping[str, str] | None, why: str) -> bool:
    """Link `span` to the trace carried in W3C `headers` (e.g. the trace a rollout was started in), saying why.

    False when the headers carry no trace (nothing is linked)."""
    linked = trace.get_current_span(_propagator.extract(dict(headers or {}))).get_span_context()
    if not linked.is_valid:
        return False
    span.add_link(linked, {"flotilla.link": why})
    return True


@contextmanager
def consumer_span(name: str, headers: Mapping[str, str] | None, subject: str) -> Iterator[Span]:
    """A span continuing the trace carried in a message's headers (or a new trace when there is none).

    Usable in any thread (the database thread of a batched consumer): the span is current in the calling thread
    for its life. Per event on the hot paths, so kept cheap: one tracer, one context attach (about 35 us a span
    on the 2-core machine, against 54 us with a tracer looked up and the parent attached apart)."""
    global _consumer_tracer
    if _consumer_tracer is None:
        _consumer_tracer = trace.get_tracer("flotilla")
    parent = _propagator.extract(headers) if headers and "traceparent" in headers else otel_context.Context()
    with _consumer_tracer.start_as_current_span(
        name,
        context=parent,
        kind=SpanKind.SERVER,
        attributes={"messaging.system": "nats", "messaging.destination.name": subject},
    ) as span:
        yield span
