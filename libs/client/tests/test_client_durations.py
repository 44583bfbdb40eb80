"""Durations as users type them for `--since` and timeouts."""

from __future__ import annotations

import pytest

from flotilla_client.durations import format_duration, parse_duration
from flotilla_client.errors import UsageError


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("10m", 600),
        ("2h", 7200),
        ("1d", 86400),
        ("1h30m", 5400),
        ("500ms", 0.5),
        ("45", 45),
        ("1.5h", 5400),
    ],
)
def test_parses_units_and_combinations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "10x", "m10", "10m junk", "-5", "1h-30m"])
def test_refuses_what_is_not_a_duration_with_an_example(text: str) -> None:
    with pytest.raises(UsageError, match=r"duration|negative"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (42.9, "42s"), (312, "5m12s"), (3 * 3600 + 240, "3h4m"), (2 * 86400 + 5 * 3600, "2d5h")],
)
def test_formats_elapsed_time_shortly(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
