"""Rendering of command results as kubectl does (`-o table|wide|json|yaml|name`); shared by every read command."""

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

FORMATS = ("table", "wide", "json", "yaml", "name")


@dataclass(frozen=True)
class Column:
    """A table column: its header and how to read the cell from an item (a key or a function)."""

    header: str
    get: str | Callable[[Any], Any]
    max_width: int = 0  # 0: no limit; longer cells are cut with an ellipsis (not in -o wide)
    wide: bool = False  # shown only with -o wide

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


def render_table(items: Iterable[Any], columns: Sequence[Column], wide: bool = False) -> str:
    """Aligned columns with a header row; no trailing spaces. `wide`: the wide columns too, and no cell cut."""
    columns = [col for col in columns if wide or not col.wide]
    rows = [[col.header for col in columns]]
    rows += [[_fit(cell(col.value(item)), 0 if wide else col.max_width) for col in columns] for item in items]
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
    """A list of items in the chosen format: the table shows `columns` (wide: the wide ones too), JSON and YAML
    show everything."""
    if fmt == "json":
        return render_json(list(items))
    if fmt == "yaml":
        return render_yaml(list(items))
    if fmt in ("table", "wide"):
        return render_table(items, columns, wide=fmt == "wide")
    raise click.BadParameter(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}")


@dataclass(frozen=True)
class Listing:
    """How one kind of thing is listed: `kind/id` lines for -o name, what an empty list says, the columns, and the
    plain form JSON and YAML show (every field, not only the columns)."""

    kind: str  # cluster: `-o name` prints cluster/<id>
    plural: str  # clusters: an empty list says "No clusters found."
    columns: Sequence[Column]
    name: Callable[[Any], str]
    plain: Callable[[Any], Any] = to_plain


def render_list(items: Sequence[Any], fmt: str, listing: Listing) -> str:
    """Items in any of FORMATS; an empty table or name list is "" (show_list says so on stderr)."""
    if fmt == "name":
        return "\n".join(f"{listing.kind}/{listing.name(item)}" for item in items)
    if fmt in ("json", "yaml"):
        return render([listing.plain(item) for item in items], fmt, listing.columns)
    if not items:
        return ""
    return render(items, fmt, listing.columns)


def show_list(items: Sequence[Any], fmt: str, listing: Listing) -> None:
    """Print a list as kubectl does: an empty one says `No <plural> found.` on stderr (exit 0), no bare header."""
    if not items and fmt not in ("json", "yaml"):
        click.echo(f"No {listing.plural} found.", err=True)
        return
    click.echo(render_list(items, fmt, listing))


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
    """The `-o/--output` option every read command shares: table, wide (more columns), json, yaml, name (kind/id)."""
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
