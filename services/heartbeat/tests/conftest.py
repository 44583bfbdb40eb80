"""A simulated fleet for domain tests: heartbeats and ticks on an injected clock, transitions collected."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from flotilla_contracts.v1.common import ConditionStatus, NodeCondition, NodeConditionType
from flotilla_contracts.v1.heartbeat import ApiServerHealth, Heartbeat, NodeHealthChanged, ProbeResult
from flotilla_heartbeat.domain import HealthModel
from flotilla_heartbeat.health_state import Policy, Transition

WALL0 = 1_700_000_000.0


def heartbeat(
    cluster: str, node: str, seq: int, wall: float, ready: bool = True, api_ok: bool | None = None
) -> Heartbeat:
    status = ConditionStatus.TRUE if ready else ConditionStatus.FALSE
    api = None
    if api_ok is not None:
        result = ProbeResult.OK if api_ok else ProbeResult.FAILED
        api = ApiServerHealth(livez=ProbeResult.OK, readyz=result, version="v1.30.4")
    return Heartbeat(
        cluster_id=cluster,
        node_id=node,
        node_name=node,
        seq=seq,
        sent_at=datetime.fromtimestamp(wall, UTC),
        kubelet_version="v1.30.4",
        conditions=[NodeCondition(type=NodeConditionType.READY, status=status)],
        api_server=api,
    )


@dataclass
class Fleet:
    """The clock starts at 0; `at(t)` moves it, ticking every `tick_s` on the way like the service loop does."""

    policy: Policy = field(default_factory=lambda: Policy(startup_grace_s=0.0))
    tick_s: float = 0.1
    now: float = 0.0
    events: list[tuple[float, Transition]] = field(default_factory=list)
    seq: int = 0

    def __post_init__(self) -> None:
        self.model = HealthModel(self.policy, started=0.0, wall_offset=WALL0)

    def member(self, *clusters: str) -> Fleet:
        for cluster in clusters:
            self.model.add_cluster(cluster)
        return self

    def at(self, t: float) -> None:
        while self.now + self.tick_s <= t + 1e-9:
            self.now = round(self.now + self.tick_s, 6)
            self._tick()
        self.now = t

    def _tick(self) -> None:
        self.events += [(self.now, e) for e in self.model.tick(self.now, self.now + WALL0)]

    def send(self, cluster: str, node: str, ready: bool = True, skew: float = 0.0, api_ok: bool | None = None) -> bool:
        self.seq += 1
        self.model.begin(self.now, self.now + WALL0)
        return self.model.observe(heartbeat(cluster, node, self.seq, self.now + WALL0 + skew, ready, api_ok))

    def node_events(self, node: str | None = None) -> list[tuple[float, NodeHealthChanged]]:
        return [
            (t, e) for t, e in self.events if isinstance(e, NodeHealthChanged) and (node is None or e.node_id == node)
        ]


@pytest.fixture
def new_fleet() -> type[Fleet]:
    """The Fleet class (tests and Hypothesis examples make a fresh fleet each)."""
    return Fleet
