"""How long the orchestrator waits for things: step deadlines, inventory, no progress."""

from __future__ import annotations

from dataclasses import dataclass

from flotilla_contracts.v1.agent import StepKind
from flotilla_upgrade_orchestrator.model import Rollout


@dataclass(frozen=True)
class Timeouts:
    """How long a step may stay unanswered before the node fails with StepTimeout (beyond its deadline)."""

    cordon_s: float = 120.0
    upgrade_s: float = 1800.0
    uncordon_s: float = 120.0
    grace_s: float = 60.0
    inventory_s: float = 300.0  # a cluster whose nodes all finished waits this long for its inventory at the target
    no_progress_s: float = 600.0  # Running with nothing issued or received this long: freeze NoProgress

    def for_step(self, step: StepKind, rollout: Rollout) -> float:
        if step is StepKind.DRAIN:
            return rollout.spec.drain.timeout_s + self.cordon_s
        if step is StepKind.VERIFY:
            return rollout.spec.health_gates.verify_timeout_s + self.cordon_s
        if step in (StepKind.UPGRADE, StepKind.ROLLBACK):
            return self.upgrade_s
        return self.uncordon_s if step is StepKind.UNCORDON else self.cordon_s
