"""Prometheus metrics in the text exposition format (0.0.4), served on the service's HTTP port at `/metrics`.

A service gets `app.metrics` (a `Registry`) and adds its own figures with `counter`, `gauge`, `histogram`
(values it updates) or `counter_fn`, `gauge_fn`, `collector` (values read at scrape time from objects it already
keeps, which costs nothing on the hot path). The runtime registers its own: commands and events handled and
failed, handler latency, outbox lag, NATS errors. Everything runs on the event loop: no locks.
"""

from __future__ import annotations

import abc
import bisect
import inspect
import math
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds: from a fast in-memory reply (0.5 ms) to a slow database-bound command (10 s).
LATENCY_BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
LabelValues = tuple[str, ...]


@dataclass(frozen=True)
class Sample:
    """One line of a family: `<family name><suffix>{labels} value`."""

    labels: Mapping[str, str]
    value: float
    suffix: str = ""


@dataclass(frozen=True)
class Family:
    """A metric family as exposed: name, type (counter, gauge, histogram, summary, untyped), help, samples."""

    name: str
    kind: str
    help: str
    samples: Sequence[Sample]


Collector = Callable[[], Iterable[Family]] | Callable[[], Awaitable[Iterable[Family]]]


def _check_name(name: str) -> None:
    if not _NAME_RE.match(name):
        raise ValueError(f"{name!r} is not a valid Prometheus metric name")


def _check_labels(labels: Sequence[str]) -> tuple[str, ...]:
    for label in labels:
        if not _LABEL_RE.match(label) or label.startswith("__") or label == "le":
            raise ValueError(f"{label!r} is not a valid label name here")
    return tuple(labels)


class _Metric(abc.ABC):
    kind = "untyped"

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        _check_name(name)
        self.name = name
        self.help = help
        self.label_names = _check_labels(labels)

    def _key(self, labels: Mapping[str, str]) -> LabelValues:
        if set(labels) != set(self.label_names):
            raise ValueError(f"{self.name} takes labels {list(self.label_names)}, not {sorted(labels)}")
        return tuple(str(labels[name]) for name in self.label_names)

    def _labels(self, key: LabelValues) -> dict[str, str]:
        return dict(zip(self.label_names, key, strict=True))

    @abc.abstractmethod
    def family(self) -> Family:
        """The metric's current samples."""


class Counter(_Metric):
    """A value that only goes up (name it `..._total`)."""

    kind = "counter"

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help, labels)
        self._values: dict[LabelValues, float] = {} if labels else {(): 0.0}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise ValueError(f"{self.name}: a counter only goes up")
        key = self._key(labels)
        self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        return self._values.get(self._key(labels), 0.0)

    def family(self) -> Family:
        samples = [Sample(self._labels(key), value) for key, value in self._values.items()]
        return Family(self.name, self.kind, self.help, samples)


class Gauge(_Metric):
    """A value that goes up and down."""

    kind = "gauge"

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help, labels)
        self._values: dict[LabelValues, float] = {} if labels else {(): 0.0}

    def set(self, value: float, **labels: str) -> None:
        self._values[self._key(labels)] = float(value)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        self._values[key] = self._values.get(key, 0.0) + amount

    def dec(self, amount: float = 1.0, **labels: str) -> None:
        self.inc(-amount, **labels)

    def value(self, **labels: str) -> float:
        return self._values.get(self._key(labels), 0.0)

    def family(self) -> Family:
        samples = [Sample(self._labels(key), value) for key, value in self._values.items()]
        return Family(self.name, self.kind, self.help, samples)


@dataclass
class _Buckets:
    counts: list[int]
    total: float = 0.0
    count: int = 0


class Histogram(_Metric):
    """Observations counted into fixed buckets (cumulative `le` buckets, `_sum` and `_count` when exposed)."""

    kind = "histogram"

    def __init__(
        self, name: str, help: str, labels: Sequence[str] = (), buckets: Sequence[float] = LATENCY_BUCKETS
    ) -> None:
        super().__init__(name, help, labels)
        bounds = sorted(float(b) for b in buckets if not math.isinf(b))
        if not bounds or len(set(bounds)) != len(bounds):
            raise ValueError(f"{name}: buckets must be distinct finite numbers")
        self.bounds = tuple(bounds)
        self._series: dict[LabelValues, _Buckets] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Buckets([0] * (len(self.bounds) + 1))
        series.counts[bisect.bisect_left(self.bounds, value)] += 1  # first bound >= value: `le` semantics
        series.total += value
        series.count += 1

    def count(self, **labels: str) -> int:
        series = self._series.get(self._key(labels))
        return series.count if series else 0

    def family(self) -> Family:
        samples: list[Sample] = []
        for key, series in self._series.items():
            labels = self._labels(key)
            running = 0
            for bound, n in zip((*self.bounds, math.inf), series.counts, strict=True):
                running += n
                samples.append(Sample({**labels, "le": _format_value(bound)}, running, "_bucket"))
            samples.append(Sample(labels, series.total, "_sum"))
            samples.append(Sample(labels, series.count, "_count"))
        return Family(self.name, self.kind, self.help, samples)


@dataclass
class Registry:
    """The metrics of one process; `render()` produces the `/metrics` body."""

    _metrics: dict[str, _Metric] = field(default_factory=dict)
    _collectors: list[Collector] = field(default_factory=list)
    _names: set[str] = field(default_factory=set)

    def _claim(self, name: str) -> None:
        _check_name(name)
        if name in self._names:
            raise ValueError(f"metric {name} is registered twice")
        self._names.add(name)

    def _add(self, metric: Any) -> Any:
        self._claim(metric.name)
        self._metrics[metric.name] = metric
        return metric

    def counter(self, name: str, help: str, labels: Sequence[str] = ()) -> Counter:
        counter: Counter = self._add(Counter(name, help, labels))
        return counter

    def gauge(self, name: str, help: str, labels: Sequence[str] = ()) -> Gauge:
        gauge: Gauge = self._add(Gauge(name, help, labels))
        return gauge

    def histogram(
        self, name: str, help: str, labels: Sequence[str] = (), buckets: Sequence[float] = LATENCY_BUCKETS
    ) -> Histogram:
        histogram: Histogram = self._add(Histogram(name, help, labels, buckets))
        return histogram

    def gauge_fn(self, name: str, help: str, read: Callable[[], float]) -> None:
        """A gauge whose value is read at scrape time (e.g. the size of a dict the service keeps anyway)."""
        self._claim(name)
        self._collectors.append(lambda: [Family(name, "gauge", help, [Sample({}, float(read()))])])

    def counter_fn(self, name: str, help: str, read: Callable[[], float]) -> None:
        """A counter whose value is read at scrape time from a number the service already increments."""
        self._claim(name)
        self._collectors.append(lambda: [Family(name, "counter", help, [Sample({}, float(read()))])])

    def collector(self, collect: Collector, names: Sequence[str] = ()) -> None:
        """Families computed at scrape time (sync or async); `names` reserves their names against clashes."""
        for name in names:
            self._claim(name)
        self._collectors.append(collect)

    async def families(self) -> list[Family]:
        found = [metric.family() for metric in self._metrics.values()]
        for collect in self._collectors:
            result = collect()
            if inspect.isawaitable(result):
                result = await result
            found.extend(result)
        return found

    async def render(self) -> str:
        return render(await self.families())


def render(families: Iterable[Family]) -> str:
    """The text exposition format: HELP and TYPE lines, then one line per sample."""
    lines: list[str] = []
    for family in families:
        lines.append(f"# HELP {family.name} {_escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for sample in family.samples:
            labels = ",".join(f'{k}="{_escape_label(v)}"' for k, v in sample.labels.items())
            series = f"{family.name}{sample.suffix}" + (f"{{{labels}}}" if labels else "")
            lines.append(f"{series} {_format_value(sample.value)}")
    return "\n".join(lines) + "\n"


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))
