"""Heartbeat partitions on the bus: the nats-server mapping that creates them, and the subjects a replica reads."""

from __future__ import annotations

from flotilla_contracts import subjects


def mapping_config(count: int) -> str:
    """nats-server configuration text (top-level `mappings`) that splits heartbeats into `count` partitions."""
    source, destination = subjects.heartbeat_partition_mapping(count)
    return f'mappings: {{\n  "{source}": "{destination}"\n}}\n'


def heartbeat_filters(owned: tuple[int, ...], count: int) -> list[str]:
    """Subjects to subscribe: the partitions' mapped subjects, plus the unmapped one when there is one partition."""
    filters = [subjects.heartbeat_partition(p) for p in owned]
    if count == 1:
        filters.append(subjects.ALL_HEARTBEATS)  # no mapping configured: heartbeats arrive unmapped
    return filters
