"""Which heartbeat partitions a replica owns, and the nats-server mapping that creates the partitions."""

from __future__ import annotations

from flotilla_contracts import subjects


def mapping_config(count: int) -> str:
    """nats-server configuration text (top-level `mappings`) that splits heartbeats into `count` partitions."""
    source, destination = subjects.heartbeat_partition_mapping(count)
    return f'mappings: {{\n  "{source}": "{destination}"\n}}\n'


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


def heartbeat_filters(owned: tuple[int, ...], count: int) -> list[str]:
    """Subjects to subscribe: the partitions' mapped subjects, plus the unmapped one when there is one partition."""
    filters = [subjects.heartbeat_partition(p) for p in owned]
    if count == 1:
        filters.append(subjects.ALL_HEARTBEATS)  # no mapping configured: heartbeats arrive unmapped
    return filters
