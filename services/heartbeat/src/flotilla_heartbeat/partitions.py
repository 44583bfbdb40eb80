"""Heartbeat partitions on the bus: the nats-server mapping that creates them, and the subjects a replica reads."""

from __future__ import annotations

from flotilla_contracts import subjects


def mapping_config(count: int) -> str:
    """nats-server configuration text (top-level `mappings`) that splits heartbeats into `count` partitions:
    single heartbeats and batches by the same hash of the cluster token, so a cluster's both land together."""
    lines = [f'  "{source}": "{destination}"' for source, destination in mappings(count)]
    return "mappings: {\n" + "\n".join(lines) + "\n}\n"


def mappings(count: int) -> list[tuple[str, str]]:
    """(source, destination) of every heartbeat subject mapping."""
    return [subjects.heartbeat_partition_mapping(count), subjects.heartbeat_batch_partition_mapping(count)]


def heartbeat_filters(owned: tuple[int, ...], count: int) -> list[str]:
    """Subjects to subscribe: the partitions' mapped subjects, plus the unmapped one when there is one partition."""
    filters = [f(p) for p in owned for f in (subjects.heartbeat_partition, subjects.heartbeat_batch_partition)]
    if count == 1:  # no mapping configured: heartbeats arrive unmapped
        filters += [subjects.ALL_HEARTBEATS, subjects.ALL_HEARTBEAT_BATCHES]
    return filters
