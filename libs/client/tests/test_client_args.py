"""Input checked locally before anything is sent: subjects, headers, JSON, event filters, discovery times."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from flotilla_client.cli.bus import check_json, check_subject, parse_headers
from flotilla_client.discovery import merge, parse_time
from flotilla_client.errors import UsageError
from flotilla_client.events import event_filter


@pytest.mark.parametrize("subject", ["", "  ", "a b", "a..b", ".a", "a.", "a.*.c", "a.>"])
def test_subjects_one_cannot_publish_to_are_refused(subject: str) -> None:
    with pytest.raises(UsageError):
        check_subject(subject)


def test_a_concrete_subject_passes() -> None:
    assert check_subject("fleet.v1.cmd.registration.info") == "fleet.v1.cmd.registration.info"


def test_headers_are_name_value_pairs() -> None:
    assert parse_headers(("A=1", "B-c=x=y")) == {"A": "1", "B-c": "x=y"}
    for bad in ("novalue", "=x", "a b=c"):
        with pytest.raises(UsageError, match="NAME=VALUE"):
            parse_headers((bad,))


def test_malformed_json_is_refused_saying_nothing_was_sent() -> None:
    assert check_json('{"a": 1}') == b'{"a": 1}'
    with pytest.raises(UsageError, match=r"not valid JSON.*nothing was sent"):
        check_json('{"a": ')


@pytest.mark.parametrize(
    ("pattern", "subject"),
    [
        (None, "fleet.v1.evt.>"),
        ("cluster.>", "fleet.v1.evt.cluster.>"),
        ("fleet.v1.evt.cluster.*.approved", "fleet.v1.evt.cluster.*.approved"),
        ("fleet.v1.evt", "fleet.v1.evt.>"),
    ],
)
def test_event_filters_accept_short_and_full_patterns(pattern: str | None, subject: str) -> None:
    assert event_filter(pattern) == subject


@pytest.mark.parametrize("pattern", ["fleet.v1.cmd.>", "a b", "cluster..x"])
def test_event_filters_outside_the_stream_are_refused(pattern: str) -> None:
    with pytest.raises(UsageError):
        event_filter(pattern)


def test_discovery_times_with_nanoseconds_and_records_merge() -> None:
    assert parse_time("2025-01-02T03:04:05.123456789Z") == datetime(2025, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    assert parse_time("nonsense") is None and parse_time(None) is None
    key = ("registration", "i1")
    endpoints = [{"name": "info", "num_requests": 3, "num_errors": 1}]
    stats = {key: {"started": "2025-01-02T03:04:05Z", "endpoints": endpoints}}
    [record] = merge({key: {"version": "1.2.3", "metadata": {"health": "http://h"}}}, stats)
    assert (record.name, record.id, record.version, record.requests, record.errors, record.health) == (
        "registration",
        "i1",
        "1.2.3",
        3,
        1,
        "http://h",
    )
    assert record.uptime_s is not None and record.uptime_s > 0
