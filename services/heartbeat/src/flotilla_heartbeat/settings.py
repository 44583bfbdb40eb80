"""The service's settings (`FLOTILLA_HEARTBEAT_*`), checked at start with a message naming the variable.

A leaf: it imports nothing else of the service; `app.py` turns settings into the parts' own values.
"""

from __future__ import annotations

from flotilla_runtime.errors import SettingsError
from flotilla_runtime.settings import ServiceSettings


class Settings(ServiceSettings, kw_only=True, frozen=True):
    """`FLOTILLA_HEARTBEAT_*` environment variables (see flotilla_runtime.settings for the shared ones)."""

    interval_s: float = 10.0
    missed_intervals: int = 3
    lost_after_s: float = 300.0
    clock_skew_threshold_s: float = 30.0
    startup_grace_s: float = 30.0
    flap_window_s: float = 30.0
    partition_count: int = 1
    partitions: str = ""  # owned partitions, e.g. "0,2"; empty: all
    noise_window_s: float = 60.0
    checkpoint_interval_s: float = 5.0
    tick_s: float = 0.1
    batch: int = 1024
    peer_timeout_s: float = 2.0
    max_nodes_per_cluster: int = 5000  # tracked nodes per cluster; over it a new node is refused (node_quota)
    rate_headroom: float = 3.0  # heartbeats a cluster may send per tracked node per interval, on average
    refusal_window_s: float = 60.0  # one security event per cluster and reason per window


def parse_owned(text: str, count: int) -> tuple[int, ...]:
    """`"0,2"` -> (0, 2); empty means all `count` partitions. Raises ValueError naming what is wrong."""
    if count < 1:
        raise ValueError(f"partition count must be at least 1, not {count}")
    if not text.strip():
        return tuple(range(count))
    owned: set[int] = set()
    for part in text.split(","):
        token = part.strip()
        if not token.isdigit() or int(token) >= count:
            raise ValueError(f"{token!r} is not a partition number from 0 to {count - 1}")
        owned.add(int(token))
    return tuple(sorted(owned))


def owned_partitions(settings: Settings) -> tuple[int, ...]:
    """The partitions this replica owns; raises `SettingsError` naming the variables when they make no sense."""
    try:
        return parse_owned(settings.partitions, settings.partition_count)
    except ValueError as exc:
        raise SettingsError(f"FLOTILLA_HEARTBEAT_PARTITIONS / PARTITION_COUNT: {exc}") from None


def validate(settings: Settings) -> None:
    """Raises `SettingsError` for the first setting out of range (the service does not start)."""
    owned_partitions(settings)
    positive = ("interval_s", "lost_after_s", "clock_skew_threshold_s", "flap_window_s", "tick_s", "noise_window_s")
    for name in (*positive, "max_nodes_per_cluster", "refusal_window_s"):
        if getattr(settings, name) <= 0:
            raise SettingsError(f"FLOTILLA_HEARTBEAT_{name.upper()} must be above 0")
    if settings.missed_intervals < 1 or settings.lost_after_s <= settings.interval_s * settings.missed_intervals:
        raise SettingsError("FLOTILLA_HEARTBEAT_LOST_AFTER_S must exceed INTERVAL_S x MISSED_INTERVALS")
    if settings.rate_headroom < 1.0:
        raise SettingsError(
            "FLOTILLA_HEARTBEAT_RATE_HEADROOM must be at least 1 (heartbeats per node per interval it lets through)"
        )
