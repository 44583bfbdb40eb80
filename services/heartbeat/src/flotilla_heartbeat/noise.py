"""Heartbeats from clusters that are not members here: counted, and reported at most once per cluster per window."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from flotilla_contracts.v1.heartbeat import HeartbeatNoiseReported, NoiseReason

MAX_SAMPLES = 10


@dataclass
class _Entry:
    reason: NoiseReason
    count: int = 0
    samples: list[str] = field(default_factory=list)


@dataclass
class NoiseWindow:
    """Bounded: at most `max_clusters` clusters per window; beyond that only `overflow` grows."""

    window_s: float
    max_clusters: int = 10_000
    started_wall: float = 0.0
    entries: dict[str, _Entry] = field(default_factory=dict)
    overflow: int = 0
    total: int = 0

    def count(self, cluster_id: str, node_id: str, reason: NoiseReason) -> None:
        self.total += 1
        entry = self.entries.get(cluster_id)
        if entry is None:
            if len(self.entries) >= self.max_clusters:
                self.overflow += 1
                return
            entry = self.entries[cluster_id] = _Entry(reason)
        entry.count += 1
        if len(entry.samples) < MAX_SAMPLES and node_id not in entry.samples:
            entry.samples.append(node_id)

    def due(self, wall: float) -> bool:
        return wall - self.started_wall >= self.window_s

    def close(self, wall: float) -> list[HeartbeatNoiseReported]:
        """End the window: one report per noisy cluster, then start a new window."""
        start = datetime.fromtimestamp(self.started_wall or wall, UTC)
        end = datetime.fromtimestamp(wall, UTC)
        reports = [
            HeartbeatNoiseReported(
                cluster_id=cluster_id,
                reason=entry.reason,
                count=entry.count,
                sample_nodes=entry.samples,
                window_start=start,
                window_end=end,
            )
            for cluster_id, entry in self.entries.items()
        ]
        self.entries, self.overflow, self.started_wall = {}, 0, wall
        return reports
