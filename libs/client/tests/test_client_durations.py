"""Durations as users type them for `--since` and timeouts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from flotilla_client.durations import format_duration, parse_duration, parse_since
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


NOW = datetime(2026, 12, 3, 21, 30, tzinfo=UTC)


def test_since_a_duration_counts_back_from_now() -> None:
    since = parse_since("10m", NOW)
    assert since.start == NOW - timedelta(minutes=10)
    assert since.words == "in the last 10m"


@pytest.mark.parametrize(
    ("text", "start"),
    [
        ("2026-12-03T21:00:00Z", datetime(2026, 12, 3, 21, 0, tzinfo=UTC)),
        ("2026-12-03T22:00:00.250+01:00", datetime(2026, 12, 3, 21, 0, 0, 250_000, tzinfo=UTC)),
    ],
)
def test_since_a_time_starts_there_whatever_now_is(text: str, start: datetime) -> None:
    since = parse_since(text, NOW)
    assert since.start == start and since.start.tzinfo is UTC
    assert since.words == f"since {text}"


def test_since_a_time_without_a_zone_is_refused_rather_than_guessed() -> None:
    with pytest.raises(UsageError, match="no time zone"):
        parse_since("2026-12-03T21:00:00", NOW)


@pytest.mark.parametrize("text", ["", "yesterday", "10x", "2026-13-40T00:00:00Z"])
def test_since_neither_duration_nor_time_says_both_forms(text: str) -> None:
    with pytest.raises(UsageError, match=r"neither a duration .* nor a time"):
        parse_since(text, NOW)
