"""Rendering of command results as a table, JSON or YAML; shared by every command that lists things."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import click
import msgspec
import yaml

F = TypeVar("F", bound=Callable[..., Any])

FORMATS = ("table", "json", "yaml")


@dataclass(frozen=True)
class Column:
    """A table column: its header and how to read the cell from an item (a key or a function)."""

    header: str
    get: str | Callable[[Any], Any]
    max_width: int = 0  # 0: no limit; longer cells are cut with an ellipsis

    def value(self, item: Any) -> Any:
        if callable(self.get):
            return self.get(item)
        if isinstance(item, dict):
            return item.get(self.get)
        return getattr(item, self.get, None)


def to_plain(value: Any) -> Any:
    """Structs, dataclasses and datetimes as plain JSON-ready values (datetimes in RFC 3339)."""
    return msgspec.to_builtins(value)


def cell(value: Any) -> str:
    """One table cell: `-` for nothing, compact floats, RFC 3339 times, comma-joined lists."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds").replace("+00:00", "Z")
    if isinstance(value, list | tuple | set):
        return ",".join(cell(v) for v in value) or "-"
    if isinstance(value, dict):
        return json.dumps(to_plain(value), separators=(",", ":"), sort_keys=True)
    return str(value)


def _fit(text: str, width: int) -> str:
    return text if not width or len(text) <= width else text[: max(width - 1, 1)] + "…"


def render_table(items: Iterable[Any], columns: Sequence[Column]) -> str:
    """Aligned columns with a header row; no trailing spaces."""
    rows = [[col.header for col in columns]]
    rows += [[_fit(cell(col.value(item)), col.max_width) for col in columns] for item in items]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def render_json(value: Any) -> str:
    return json.dumps(to_plain(value), indent=2, ensure_ascii=False)


def render_json_line(value: Any) -> str:
    """One compact JSON document on one line (JSON Lines), for streams of records."""
    return json.dumps(to_plain(value), separators=(",", ":"), ensure_ascii=False)


def render_yaml(value: Any) -> str:
    return yaml.safe_dump(to_plain(value), sort_keys=False, allow_unicode=True).rstrip("\n")


def render(items: Sequence[Any], fmt: str, columns: Sequence[Column]) -> str:
    """A list of items in the chosen format: the table shows `columns`, JSON and YAML show everything."""
    if fmt == "json":
        return render_json(list(items))
    if fmt == "yaml":
        return render_yaml(list(items))
    if fmt == "table":
        return render_table(items, columns)
    raise click.BadParameter(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}")


class TableStream:
    """A table printed row by row (for followed streams): fixed widths, the header before the first row."""

    def __init__(self, columns: Sequence[Column], widths: Sequence[int]) -> None:
        self.columns = columns
        self.widths = widths
        self._started = False

    def _line(self, cells: Sequence[str]) -> str:
        parts = [_fit(c, w).ljust(w) for c, w in zip(cells[:-1], self.widths[:-1], strict=True)]
        return "  ".join([*parts, cells[-1]]).rstrip()

    def header(self) -> str:
        return self._line([col.header for col in self.columns])

    def row(self, item: Any) -> str:
        line = self._line([cell(col.value(item)) for col in self.columns])
        if not self._started:
            self._started = True
            return self.header() + "\n" + line
        return line


def output_option(*formats: str, default: str = "table") -> Callable[[F], F]:
    """The `-o/--output` option every listing command shares."""
    choices = formats or FORMATS
    return click.option(
        "-o",
        "--output",
        "output",
        type=click.Choice(choices),
        default=default,
        show_default=True,
        help="Output format.",
    )
