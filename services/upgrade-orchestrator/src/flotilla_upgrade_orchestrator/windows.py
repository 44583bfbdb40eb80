"""Maintenance windows: is a cluster open for new disruption now, and if not, when does it open (I7)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from flotilla_contracts.v1.upgrade import MaintenanceWindow, Weekday
from flotilla_kube.selectors import Selector, SelectorError, parse_selector

_DAYS = [Weekday.MON, Weekday.TUE, Weekday.WED, Weekday.THU, Weekday.FRI, Weekday.SAT, Weekday.SUN]


class WindowError(ValueError):
    """A window that cannot be evaluated: a bad selector or an unknown time zone."""


@dataclass(frozen=True)
class Window:
    """A parsed maintenance window."""

    selector: Selector
    days: frozenset[int]  # 0 = Monday; empty = every day
    start: time
    duration: timedelta
    zone: ZoneInfo


@dataclass(frozen=True)
class Openness:
    open: bool
    opens_at: datetime | None = None  # when closed: the next opening (None: never within a fortnight)
    closes_at: datetime | None = None  # when open inside a window: its end


def parse_window(window: MaintenanceWindow) -> Window:
    try:
        selector = parse_selector(window.selector)
    except SelectorError as exc:
        raise WindowError(f"maintenance window selector {window.selector!r}: {exc}") from None
    try:
        zone = ZoneInfo(window.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise WindowError(f"maintenance window time zone {window.timezone!r} is not an IANA time zone") from None
    hours, minutes = (int(part) for part in window.start.split(":"))
    return Window(
        selector=selector,
        days=frozenset(_DAYS.index(day) for day in window.days),
        start=time(hours, minutes),
        duration=timedelta(seconds=window.duration_s),
        zone=zone,
    )


def parse_windows(windows: Sequence[MaintenanceWindow]) -> list[Window]:
    return [parse_window(window) for window in windows]


def openness(windows: Sequence[Window], labels: Mapping[str, str], now: datetime) -> Openness:
    """A cluster matching no window is always open; otherwise open inside any matching window."""
    mine = [window for window in windows if window.selector.matches(labels)]
    if not mine:
        return Openness(open=True)
    next_open: datetime | None = None
    latest_close: datetime | None = None
    for window in mine:
        local_today = now.astimezone(window.zone).date()
        for offset in range(-8, 15):
            day = local_today + timedelta(days=offset)
            if window.days and day.weekday() not in window.days:
                continue
            start = datetime.combine(day, window.start, tzinfo=window.zone)
            end = start + window.duration
            if start <= now < end:
                latest_close = end if latest_close is None else max(latest_close, end)
            elif start > now and (next_open is None or start < next_open):
                next_open = start
    if latest_close is not None:
        return Openness(open=True, closes_at=latest_close)
    return Openness(open=False, opens_at=next_open)
