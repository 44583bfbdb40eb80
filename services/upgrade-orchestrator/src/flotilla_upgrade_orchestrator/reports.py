"""Step reports as they arrive: authorized by sender (senders.py) first, then applied (reactions.on_report).

A refused report changes nothing: it is counted in `flotilla_member_refused_total{reason}`, the first
of its sender and reason in a window becomes a MemberRefused event in the same transaction (outbox), and
the intake acks it like any handled event, so it is neither applied nor redelivered.
"""

from __future__ import annotations

from datetime import datetime

from flotilla_contracts.v1.agent import NodeStepReported
from flotilla_runtime.store import SyncTx
from flotilla_runtime.trust import RefusalLedger
from flotilla_upgrade_orchestrator import reactions
from flotilla_upgrade_orchestrator.engine import Engine, log
from flotilla_upgrade_orchestrator.senders import check_body, check_report, sender_of


def receive_report(
    engine: Engine, ledger: RefusalLedger, tx: SyncTx, subject: str, report: NodeStepReported, now: datetime
) -> None:
    sender = sender_of(subject)
    if sender is None:  # the intake reads only step-report subjects
        log.error("a step report on %s, which is not a step report subject; ignored", subject)
        return
    refusal = check_body(sender, report)
    if refusal is None:
        rollout_id = engine.command_rollout(tx, report.command_id, sender.cluster_id, sender.node_id)
        refusal = check_report(sender, report, None if rollout_id is None else sender)
    if refusal is None:
        reactions.on_report(engine, tx, report, now)
        return
    event = ledger.refuse(
        sender.cluster_id, refusal.reason, node=sender.node_id, subject=subject, detail=refusal.detail
    )
    target = engine.inflight.get(report.command_id)  # whose command it names, when one of ours is in flight
    bound = log.bind(
        cluster=sender.cluster_id,
        node=sender.node_id,
        rollout=report.rollout_id,
        command=report.command_id,
        targeted="/".join(target) if target else "",
        reason=refusal.reason.value,
    )
    if event is None:
        bound.debug("refused a step report: %s", refusal.detail)
        return
    tx.emit(ledger.subject_for(event), event)
    bound.warning("refused a step report; nothing changed: %s", refusal.detail)
