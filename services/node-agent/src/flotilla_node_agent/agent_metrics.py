"""What a node-agent process did, on /metrics: steps by outcome and their durations, refusals, heartbeats.

One `AgentMetrics` per process, made and registered once in `app.setup` and shared through `AgentContext` by
every `NodeAgent` the process (re)builds: a restarted agent loop, a renewed login or a rebuilt connection
reuses the same counters, so no metric is registered twice and no count starts over. Label values are enum
values only (steps, outcomes, refusal reasons), never an id; every pair is a series from the start, 0 included.
The command consumers' pull-loop counters (`commands`) reach `flotilla_events_total` and
`flotilla_dead_letters_total` through the runtime (`ServiceApp.count`) under the stable name `COMMANDS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from flotilla_contracts.streams import service_consumer
from flotilla_contracts.subjects import Service
from flotilla_contracts.v1.agent import RefusalReason, StepKind
from flotilla_runtime.consumers import ConsumerStats as RuntimeConsumerStats
from flotilla_runtime.metrics import Counter, Family, Histogram, Registry

# The command consumers' label on the runtime's consumer metrics (the durables are per node: agent-2-<c>-<n>).
COMMANDS = service_consumer(Service.NODE_AGENT, "commands")
# Seconds: a simulated cordon (a few ms) to a slow kubeadm upgrade or a drain held by budgets (30 min).
EVICTED, BLOCKED = "evicted", "blocked"
EVICTION_RESULTS = (EVICTED, BLOCKED)
STEP_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600)


class StepResult(StrEnum):
    """How a step command ended on this node (label `outcome`)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REFUSED = "refused"


@dataclass
class CommandStats(RuntimeConsumerStats):
    """A command consumer's counters (`handled`: steps executed and acked); `dropped`: simulated crashes."""

    dropped: int = 0

    @property
    def executed(self) -> int:
        return self.handled

    @property
    def retried(self) -> int:
        """Redeliveries asked for: failures retried and unreachable nodes waited for."""
        return self.loop.retried + self.loop.waited


@dataclass
class AgentMetrics:
    """The process's figures; `register` puts them on a registry once."""

    steps: Counter = field(
        default_factory=lambda: Counter(
            "flotilla_node_agent_steps_total",
            "Step commands this agent finished, by step and outcome (succeeded, failed, refused).",
            ["step", "outcome"],
        )
    )
    durations: Histogram = field(
        default_factory=lambda: Histogram(
            "flotilla_node_agent_step_duration_seconds",
            "Time this agent spent executing a step (succeeded or failed), by step.",
            ["step"],
            buckets=STEP_BUCKETS,
        )
    )
    refused: Counter = field(
        default_factory=lambda: Counter(
            "flotilla_node_agent_commands_refused_total",
            "Commands refused without touching the node, by reason (stale_epoch, deadline_passed, wrong_node, ...).",
            ["reason"],
        )
    )
    heartbeats: Counter = field(
        default_factory=lambda: Counter("flotilla_node_agent_heartbeats_sent_total", "Heartbeats published.")
    )
    heartbeat_failures: Counter = field(
        default_factory=lambda: Counter(
            "flotilla_node_agent_heartbeat_failures_total",
            "Heartbeats not sent: the node could not be read or the publish failed.",
        )
    )
    evictions: Counter = field(
        default_factory=lambda: Counter(
            "flotilla_node_agent_evictions_total",
            "Pod evictions the Kubernetes driver asked for while draining, by result: evicted (accepted) or blocked "
            "(refused by a PodDisruptionBudget; retried with back-off until the drain's timeout).",
            ["result"],
        )
    )
    commands: CommandStats = field(default_factory=CommandStats)

    def __post_init__(self) -> None:
        for step in StepKind:
            for result in StepResult:
                self.steps.inc(0, step=step.value, outcome=result.value)
        for reason in RefusalReason:
            self.refused.inc(0, reason=reason.value)
        for evicted in EVICTION_RESULTS:
            self.evictions.inc(0, result=evicted)

    def finished(self, step: StepKind, result: StepResult, seconds: float | None = None) -> None:
        """A step command ended; `seconds` when it was executed (not for a refusal)."""
        self.steps.inc(step=step.value, outcome=result.value)
        if seconds is not None:
            self.durations.observe(seconds, step=step.value)

    def refusal(self, step: StepKind | None, reason: RefusalReason) -> None:
        """A command refused; `step` when it was decoded far enough to know it."""
        self.refused.inc(reason=reason.value)
        if step is not None:
            self.steps.inc(step=step.value, outcome=StepResult.REFUSED.value)

    def eviction(self, blocked: bool) -> None:
        """One eviction asked for: accepted, or blocked by a disruption budget."""
        self.evictions.inc(result=BLOCKED if blocked else EVICTED)

    def register(self, registry: Registry) -> None:
        """Expose the figures on `registry` (once per process: a second call raises)."""
        metrics = (self.steps, self.durations, self.refused, self.heartbeats, self.heartbeat_failures, self.evictions)

        def collect() -> list[Family]:
            return [metric.family() for metric in metrics]

        registry.collector(collect, [metric.name for metric in metrics])
