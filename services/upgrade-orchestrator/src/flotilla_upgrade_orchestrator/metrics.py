"""What an operator alerts on, on /metrics: rollouts, clusters and nodes by state, freezes by reason, node steps.

The gauges are computed at scrape time from the engine's records (`engine.rollouts`), so nothing is added to the
intake's hot path and nothing here can disagree with `upgrade status`. Node step durations are taken as the
orchestrator saw them, from the command's `issued_at` to the moment its final report (succeeded or failed) is
applied: the step handler is wrapped (`StepTimes.wrap`), the pair is queued from the database thread and moved
into the histogram on the event loop at scrape time. Label values are enum values and a fixed vocabulary of
failure reasons only (a member's free-text reason counts as `other`), never ids.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Mapping
from datetime import datetime
from enum import StrEnum
from typing import TypeVar

from flotilla_contracts.v1.agent import NodeStepReported, RefusalReason, StepOutcome
from flotilla_contracts.v1.upgrade_status import (
    ClusterRolloutState,
    FreezeReason,
    NodeStepState,
    RolloutState,
)
from flotilla_runtime.metrics import Family, Histogram, Registry, Sample
from flotilla_runtime.store import SyncTx
from flotilla_upgrade_orchestrator.engine import Engine
from flotilla_upgrade_orchestrator.intake import SyncHandler
from flotilla_upgrade_orchestrator.model import FINAL_ROLLOUT, NodeRec

# Seconds: a simulated cordon (a few ms) to a slow kubeadm upgrade (the upgrade timeout's default is 30 min).
STEP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600)
# Failure reasons that become label values: the node-agent's (drivers), the orchestrator's own, the agents'
# refusals. Anything else a member reports is `other`, so a member cannot add series.
STEP_FAILURE_REASONS = frozenset(
    {
        "drain_timeout",
        "pods_not_evictable",
        "upgrade_failed",
        "verify_timeout",
        "node_not_found",
        "no_executor",
        "unsupported_step",
        "StepTimeout",
        *(r.value for r in RefusalReason),
    }
)
OTHER = "other"
METRICS = (
    "flotilla_rollouts",
    "flotilla_rollouts_frozen",
    "flotilla_rollout_clusters",
    "flotilla_rollout_clusters_frozen",
    "flotilla_rollout_nodes",
    "flotilla_node_step_failures_total",
)
_FINAL = frozenset(FINAL_ROLLOUT)
E = TypeVar("E", bound=StrEnum)


def failure_reason(reason: str) -> str:
    """The label value of a failure reason: itself when known, else `other`."""
    return reason if reason in STEP_FAILURE_REASONS else OTHER


def families(engine: Engine) -> list[Family]:
    """The gauges and failure counts of every rollout the engine holds (a snapshot of the dicts first: the
    database thread may add a rollout meanwhile)."""
    rollouts = list(engine.rollouts.values())
    by_state = Counter(r.rec.state for r in rollouts)
    frozen = Counter(r.rec.freeze.reason for r in rollouts if r.rec.state is RolloutState.FROZEN and r.rec.freeze)
    clusters = Counter[ClusterRolloutState]()
    clusters_frozen = Counter[FreezeReason]()
    nodes = Counter[NodeStepState]()
    failures = Counter[tuple[str, str]]()
    for rollout in rollouts:
        for failure in list(rollout.failures):
            if failure.step is not None:
                failures[(failure.step.value, failure_reason(failure.reason))] += 1
        if rollout.rec.state in _FINAL:
            continue
        for cluster in list(rollout.clusters.values()):
            clusters[cluster.state] += 1
            if cluster.state is ClusterRolloutState.FROZEN and cluster.freeze is not None:
                clusters_frozen[cluster.freeze.reason] += 1
            nodes.update(n.state for n in cluster.nodes)
    return [
        _gauge("flotilla_rollouts", "Rollouts by state.", "state", RolloutState, by_state),
        _gauge(
            "flotilla_rollouts_frozen",
            "Frozen rollouts by freeze reason (I7: new disruption stopped; `upgrade status` says what to do).",
            "reason",
            FreezeReason,
            frozen,
        ),
        _gauge(
            "flotilla_rollout_clusters",
            "Clusters of rollouts not yet finished, by their state in the rollout.",
            "state",
            ClusterRolloutState,
            clusters,
        ),
        _gauge(
            "flotilla_rollout_clusters_frozen",
            "Frozen clusters of rollouts not yet finished, by freeze reason (lost contact freezes a cluster).",
            "reason",
            FreezeReason,
            clusters_frozen,
        ),
        _gauge(
            "flotilla_rollout_nodes",
            "Nodes of rollouts not yet finished, by step state.",
            "state",
            NodeStepState,
            nodes,
        ),
        Family(
            "flotilla_node_step_failures_total",
            "counter",
            "Node step failures recorded in the rollouts this replica holds, by step and reason "
            "(a fixed vocabulary: other for anything else).",
            [Sample({"step": step, "reason": reason}, n) for (step, reason), n in sorted(failures.items())],
        ),
    ]


def _gauge(name: str, help: str, label: str, values: Iterable[E], counts: Mapping[E, int]) -> Family:
    """One sample per enum value, 0 included: an alert sees a series appear from 0, not from nothing."""
    return Family(name, "gauge", help, [Sample({label: str(value)}, counts.get(value, 0)) for value in values])


class StepTimes:
    """Node step durations, command issued -> final report applied, into `flotilla_node_step_duration_seconds`."""

    def __init__(self, engine: Engine, histogram: Histogram) -> None:
        self.engine = engine
        self.histogram = histogram
        self._done: deque[tuple[str, float]] = deque(maxlen=100_000)  # appended in the database thread

    def wrap(self, handler: SyncHandler) -> SyncHandler:
        """`handler`, timing each report that finishes the command in flight (a refused one finishes nothing)."""

        def timed(event: NodeStepReported, subject: str, tx: SyncTx, now: datetime) -> None:
            node = self._in_flight(event)
            issued_at = node.issued_at if node is not None else 0.0
            handler(event, subject, tx, now)
            if node is not None and (node.in_flight is None or node.command_id != event.command_id):
                self._done.append((event.step.value, max(now.timestamp() - issued_at, 0.0)))

        return timed

    def _in_flight(self, event: NodeStepReported) -> NodeRec | None:
        """The node whose command this final report answers, while it is in flight."""
        if event.outcome not in (StepOutcome.SUCCEEDED, StepOutcome.FAILED):
            return None
        where = self.engine.inflight.get(event.command_id)
        rollout = self.engine.rollouts.get(where[0]) if where else None
        cluster = rollout.clusters.get(where[1]) if rollout and where else None
        if cluster is None or where is None:
            return None
        node = next((n for n in cluster.nodes if n.node_id == where[2]), None)
        return node if node is not None and node.command_id == event.command_id and node.in_flight else None

    def drain(self) -> None:
        """Move the queued durations into the histogram (on the event loop, at scrape time)."""
        while self._done:
            step, seconds = self._done.popleft()
            self.histogram.observe(seconds, step=step)


def register(metrics: Registry, engine: Engine) -> StepTimes:
    """The orchestrator's figures on `metrics`; returns the step timer to wrap the step-report handler with."""
    histogram = Histogram(
        "flotilla_node_step_duration_seconds",
        "Node step duration as the orchestrator saw it: command issued to its final report applied, by step.",
        ["step"],
        buckets=STEP_BUCKETS,
    )
    times = StepTimes(engine, histogram)

    def collect() -> list[Family]:
        times.drain()
        return [histogram.family(), *families(engine)]

    metrics.collector(collect, (histogram.name, *METRICS))
    return times
