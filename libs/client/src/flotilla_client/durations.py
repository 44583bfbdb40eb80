"""Parsing of human durations such as `30s`, `10m`, `2h`, `1d` or `1h30m` (for `--since` and timeouts)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from flotilla_client.errors import UsageError

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(text: str) -> float:
    """Seconds in a duration like `90s`, `10m`, `2h`, `1d`, `1h30m`; a bare number is seconds."""
    value = text.strip().lower()
    if not value:
        raise UsageError("empty duration: use a number with a unit, e.g. 30s, 10m, 2h or 1d")
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if seconds < 0:
            raise UsageError(f"duration {text!r} is negative")
        return seconds
    position, total = 0, 0.0
    for match in _PART.finditer(value):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    if position != len(value):
        raise UsageError(
            f"duration {text!r} is not valid: use a number with a unit (ms, s, m, h, d, w), e.g. 30s or 1h30m"
        )
    return total


def format_duration(seconds: float) -> str:
    """A short human form of an elapsed time: `42s`, `5m12s`, `3h4m`, `2d5h`."""
    whole = max(int(seconds), 0)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


@dataclass(frozen=True)
class Since:
    """Where `--since` starts, and how to say it: "in the last 10m" or "since 2026-12-03T21:00:00Z"."""

    start: datetime
    words: str


def parse_since(text: str, now: datetime) -> Since:
    """`--since`: a duration back from `now` (`10m`), or a time in RFC 3339 with its zone (`2026-12-03T21:00:00Z`)."""
    try:
        return Since(now - timedelta(seconds=parse_duration(text)), f"in the last {text.strip()}")
    except UsageError:
        pass
    try:
        start = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"--since {text!r} is neither a duration (30s, 10m, 2h, 1d) nor a time (e.g. 2026-12-03T21:00:00Z)"
        ) from None
    if start.tzinfo is None:
        raise UsageError(f"--since {text!r} has no time zone: add one, e.g. Z for UTC or +01:00")
    return Since(start.astimezone(UTC), f"since {text.strip()}")
