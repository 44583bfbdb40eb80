"""Executing one step command: decide from the journal, record before acting, act, record and report.

Every report is an outbox event committed with the journal change that causes it (I8); the caller acks
the command only after `execute` returns ACK, so a crash at any point leads to a redelivery that the
journal answers (replay) or finishes (resume), never to a second effect (I4).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec

from flotilla_contracts import catalogue
from flotilla_contracts.v1.agent import (
    NodeStepCommand,
    NodeStepReported,
    RefusalReason,
    StepKind,
    StepOutcome,
    StepProgress,
    step_report,
)
from flotilla_node_agent.agent_metrics import AgentMetrics, StepResult
from flotilla_node_agent.domain import Action, Decision, decide
from flotilla_node_agent.drivers.base import AgentCrashed, DriverUnavailable, NodeDriver, StepFailed
from flotilla_node_agent.journal import Journal
from flotilla_runtime.logs import BoundLogger
from flotilla_runtime.store import Store, Tx

PROGRESS_EVERY_S = 1.0


class Ack(enum.Enum):
    ACK = "ack"  # effects committed: acknowledge
    RETRY = "retry"  # the node or host was unreachable: nak with a delay, the journal says "running"
    DROP = "drop"  # simulated crash: leave the message unacknowledged, JetStream redelivers it


@dataclass
class Result:
    ack: Ack
    report: NodeStepReported | None = None
    retry_in_s: float = 0.0


def _now() -> datetime:
    return datetime.now(UTC)


class StepRunner:
    """Runs step commands for one node against its driver, journalled in the shared store."""

    def __init__(
        self,
        store: Store,
        journal: Journal,
        driver: NodeDriver,
        log: BoundLogger,
        verify_timeout_s: float = 300.0,
        metrics: AgentMetrics | None = None,
    ) -> None:
        self.store = store
        self.journal = journal
        self.driver = driver
        self.log = log
        self.verify_timeout_s = verify_timeout_s
        self.metrics = metrics  # the process's figures, counted once the report is committed

    def _report(self, command: NodeStepCommand, outcome: StepOutcome, **fields: object) -> NodeStepReported:
        return step_report(command, outcome, _now(), **fields)

    @staticmethod
    def subject(report: NodeStepReported) -> str:
        return catalogue.subject_for(NodeStepReported, cluster_id=report.cluster_id, node_id=report.node_id)

    async def execute(self, command: NodeStepCommand, delivery: int) -> Result:
        refused: Result | None = None
        async with self.store.transaction() as tx:
            entries = await self.journal.entries(tx, command.cluster_id, command.node_id, command.rollout_id)
            highest = await self.journal.highest_epoch(tx, command.cluster_id, command.node_id, command.rollout_id)
            decision = decide(command, entries, highest, _now())
            if decision.action is Action.REFUSE:
                refused = await self._refuse(tx, command, decision)
            elif decision.action is Action.REPLAY:
                return await self._replay(tx, command, delivery)
            else:
                await self.journal.obey_epoch(tx, command)
                await self.journal.begin(tx, command)
                accepted = self._report(
                    command, StepOutcome.ACCEPTED, reason=decision.action.value, message=decision.reason
                )
                await tx.emit(self.subject(accepted), accepted, msg_id=f"{command.command_id}-accepted")
        if refused is None:
            return await self._perform(command)
        # Committed: now it is a refusal the orchestrator will read.
        self.log.warning(
            "refused %s: %s",
            command.step.value,
            decision.reason,
            extra={"rollout": command.rollout_id, "epoch": command.epoch},
        )
        if self.metrics is not None and decision.refusal is not None:
            self.metrics.refusal(command.step, decision.refusal)
        return refused

    async def _refuse(self, tx: Tx, command: NodeStepCommand, decision: Decision) -> Result:
        """Report the refusal (the node is not touched)."""
        report = self._report(
            command,
            StepOutcome.REFUSED,
            refusal=decision.refusal,
            reason=str(decision.refusal),
            message=decision.reason,
        )
        await tx.emit(self.subject(report), report, msg_id=f"{command.command_id}-refused")
        return Result(Ack.ACK, report)

    async def _replay(self, tx: Tx, command: NodeStepCommand, delivery: int) -> Result:
        """Report the journal's recorded outcome again (a duplicate or a redelivery): nothing is executed."""
        recorded = await self.journal.recorded(tx, command)
        if recorded is None:
            return Result(Ack.ACK)
        replay = msgspec.structs.replace(recorded, replayed=True, occurred_at=_now())
        # The epoch too: a step re-sent by each new lease holder (failover) gets each its own replay.
        msg_id = f"{command.command_id}-replay-e{command.epoch}-{delivery}"
        await tx.emit(self.subject(replay), replay, msg_id=msg_id)
        return Result(Ack.ACK, replay)

    async def _perform(self, command: NodeStepCommand) -> Result:
        started = time.monotonic()
        try:
            fields = await self._act(command)
            outcome = StepOutcome.SUCCEEDED
        except StepFailed as exc:
            fields = {
                "reason": exc.reason[:256],
                "message": exc.message[:4096],
                "blocking_pods": exc.blocking_pods[:100],
            }
            outcome = StepOutcome.FAILED
        except DriverUnavailable as exc:
            self.log.warning("%s: node unreachable (%s); will retry", command.step.value, exc)
            return Result(Ack.RETRY, retry_in_s=5.0)
        except AgentCrashed:
            self.log.warning("%s: simulated agent crash mid-step", command.step.value)
            return Result(Ack.DROP)
        report = self._report(command, outcome, duration_s=round(time.monotonic() - started, 3), **fields)
        async with self.store.transaction() as tx:
            await self.journal.finish(tx, command, report)
            await tx.emit(self.subject(report), report, msg_id=f"{command.command_id}-{outcome.value}")
        if self.metrics is not None:
            result = StepResult.SUCCEEDED if outcome is StepOutcome.SUCCEEDED else StepResult.FAILED
            self.metrics.finished(command.step, result, report.duration_s)
        level = self.log.info if outcome is StepOutcome.SUCCEEDED else self.log.warning
        level(
            "%s %s: %s",
            command.step.value,
            outcome.value,
            report.message or report.reason,
            extra={"rollout": command.rollout_id},
        )
        return Result(Ack.ACK, report)

    async def _act(self, command: NodeStepCommand) -> dict[str, object]:
        step, driver = command.step, self.driver
        if step is StepKind.CORDON:
            cordon = await driver.cordon(command.rollout_id)
            note = "node was already cordoned by someone else; it will be left cordoned" if cordon.was_cordoned else ""
            return {"was_cordoned": cordon.was_cordoned, "message": note}
        if step is StepKind.DRAIN:
            drained = await driver.drain(command.rollout_id, command.drain, _Progress(self, command))
            note = f"; cordoned again {drained.recordoned}x (found schedulable)" if drained.recordoned else ""
            return {"message": f"evicted {len(drained.evicted)} pods, skipped {len(drained.skipped)}{note}"}
        if step is StepKind.UPGRADE:
            await driver.upgrade(command.target, command.kubeadm_action)
            return {"message": f"upgraded to {command.target.kubernetes_version}"}
        if step is StepKind.VERIFY:
            kubelet = await driver.verify(command.target, self.verify_timeout_s)
            return {"kubelet_version": kubelet, "message": f"Ready at {kubelet}"}
        if step is StepKind.UNCORDON:
            uncordon = await driver.uncordon(command.rollout_id)
            return {"message": uncordon.message or "uncordoned"}
        if step is StepKind.ROLLBACK:
            if command.previous is None:
                raise StepFailed(RefusalReason.PRECONDITION_FAILED.value, "rollback needs the previous versions")
            await driver.upgrade(command.previous, None)
            kubelet = await driver.verify(command.previous, self.verify_timeout_s)
            return {"kubelet_version": kubelet, "message": f"rolled back to {kubelet}"}
        raise StepFailed("unsupported_step", f"step {step.value} is not supported")


class _Progress:
    """Drain progress as events, at most one a second (each its own small transaction)."""

    def __init__(self, runner: StepRunner, command: NodeStepCommand) -> None:
        self.runner, self.command = runner, command
        self.sent_at = 0.0
        self.count = 0
        self.phase = "evicting"  # a new phase (e.g. re-cordoned) is reported and logged at once

    async def __call__(self, progress: StepProgress) -> None:
        now = time.monotonic()
        if now - self.sent_at < PROGRESS_EVERY_S and progress.pods_remaining and progress.phase == self.phase:
            return
        if progress.phase not in (self.phase, "evicting"):
            self.runner.log.info("drain: %s", progress.phase, extra={"rollout": self.command.rollout_id})
        self.sent_at, self.count, self.phase = now, self.count + 1, progress.phase
        report = self.runner._report(self.command, StepOutcome.PROGRESS, progress=progress)
        async with self.runner.store.transaction() as tx:
            await tx.emit(StepRunner.subject(report), report, msg_id=f"{self.command.command_id}-progress-{self.count}")
