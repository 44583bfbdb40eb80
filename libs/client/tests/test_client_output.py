"""Rendering shared by every listing command: table, JSON and YAML."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import msgspec
import pytest
import yaml

from flotilla_client.cli.output import Column, TableStream, cell, render, render_json_line


class Thing(msgspec.Struct, frozen=True):
    name: str
    count: int
    when: datetime | None = None


ITEMS = [Thing("alpha", 1, datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)), Thing("a-much-longer-name", 12345)]
COLUMNS = [Column("NAME", "name"), Column("COUNT", "count"), Column("WHEN", "when")]


def test_table_aligns_columns_under_their_headers() -> None:
    lines = render(ITEMS, "table", COLUMNS).splitlines()
    assert lines[0].split() == ["NAME", "COUNT", "WHEN"]
    assert lines[1].split() == ["alpha", "1", "2025-01-02T03:04:05Z"]
    assert lines[2].split() == ["a-much-longer-name", "12345", "-"]
    starts = {line.index(word) for line, word in zip(lines, ["COUNT", "1", "12345"], strict=True)}
    assert len(starts) == 1, "the COUNT column starts at the same place on every line"
    assert all(line == line.rstrip() for line in lines)


def test_json_and_yaml_carry_every_field_not_only_the_columns() -> None:
    as_json = json.loads(render(ITEMS, "json", COLUMNS[:1]))
    assert as_json[0] == {"name": "alpha", "count": 1, "when": "2025-01-02T03:04:05Z"}
    as_yaml = yaml.safe_load(render(ITEMS, "yaml", COLUMNS[:1]))
    assert as_yaml[1] == {"name": "a-much-longer-name", "count": 12345, "when": None}


def test_columns_read_dicts_and_functions() -> None:
    rows = [{"a": 1, "b": [1, 2]}]
    text = render(rows, "table", [Column("A", "a"), Column("B", "b"), Column("DOUBLE", lambda r: r["a"] * 2)])
    assert text.splitlines()[1].split() == ["1", "1,2", "2"]


def test_cells_for_empty_bool_and_float() -> None:
    assert cell(None) == "-" and cell("") == "-"
    assert cell(True) == "yes"
    assert cell(0.123456) == "0.123"


def test_streamed_table_prints_the_header_once_and_cuts_long_cells() -> None:
    stream = TableStream([Column("NAME", "name"), Column("COUNT", "count")], [6, 0])
    first = stream.row(ITEMS[0])
    second = stream.row(ITEMS[1])
    assert first.splitlines()[0].startswith("NAME")
    assert "\n" not in second
    assert second.startswith("a-muc…")


def test_json_line_is_one_line() -> None:
    assert "\n" not in render_json_line({"a": {"b": [1, 2]}})


def test_unknown_format_is_refused() -> None:
    import click

    with pytest.raises(click.BadParameter):
        render(ITEMS, "xml", COLUMNS)
