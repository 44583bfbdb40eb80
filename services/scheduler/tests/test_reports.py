"""The pure rule for applied reports: the subject's cluster is the sender, and it speaks only of what it was sent."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from flotilla_contracts import catalogue
from flotilla_contracts.v1.scheduler import AppliedState
from flotilla_contracts.v1.scheduler_events import AppliedStatusReported
from flotilla_contracts.v1.security import RefusalReason
from flotilla_scheduler.reports import IGNORE, RECORD, Outcome, Sent, judge, sender_of

SENT_GEN_2 = Sent(subscription_known=True, generation=2)


def subject(cluster_id: str, subscription: str = "web") -> str:
    return catalogue.subject_for(AppliedStatusReported, cluster_id=cluster_id, subscription=subscription)


def report(cluster_id: str, subscription: str = "web", generation: int = 2) -> AppliedStatusReported:
    return AppliedStatusReported(
        command_id="c0ffee",
        cluster_id=cluster_id,
        subscription=subscription,
        generation=generation,
        state=AppliedState.FAILED,
        message="FORGED",
        occurred_at=datetime(2026, 11, 22, tzinfo=UTC),
    )


def test_a_cluster_reporting_on_what_it_was_sent_is_recorded() -> None:
    assert judge(subject("x"), report("x"), SENT_GEN_2) == RECORD


def test_an_older_generation_is_recorded_by_the_rule_and_left_to_the_table_to_skip() -> None:
    assert judge(subject("x"), report("x", generation=1), SENT_GEN_2) == RECORD


def test_a_body_naming_another_cluster_is_refused_whatever_the_tables_say() -> None:
    verdict = judge(subject("x"), report("v"), SENT_GEN_2)
    assert (verdict.outcome, verdict.reason) == (Outcome.REFUSE, RefusalReason.SUBJECT_BODY_MISMATCH)
    assert "cluster x reported for cluster v" in verdict.detail


def test_a_body_naming_another_subscription_than_the_subject_is_refused() -> None:
    verdict = judge(subject("x", "web"), report("x", "db"), SENT_GEN_2)
    assert (verdict.outcome, verdict.reason) == (Outcome.REFUSE, RefusalReason.SUBJECT_BODY_MISMATCH)


def test_a_subscription_never_sent_to_the_sender_is_not_its_own_command() -> None:
    verdict = judge(subject("x"), report("x"), Sent(subscription_known=True, generation=None))
    assert (verdict.outcome, verdict.reason) == (Outcome.REFUSE, RefusalReason.NOT_OWN_COMMAND)
    assert "never sent to cluster x" in verdict.detail


def test_a_generation_newer_than_the_one_sent_is_not_its_own_command() -> None:
    verdict = judge(subject("x"), report("x", generation=3), SENT_GEN_2)
    assert (verdict.outcome, verdict.reason) == (Outcome.REFUSE, RefusalReason.NOT_OWN_COMMAND)


def test_a_report_on_a_deleted_subscription_is_late_not_hostile() -> None:
    assert judge(subject("x"), report("x"), Sent(subscription_known=False, generation=None)) == IGNORE


@pytest.mark.parametrize("extra", [".more", ".a.b"])
def test_a_subject_off_the_pattern_is_malformed_and_charged_to_its_cluster_token(extra: str) -> None:
    odd = subject("x") + extra
    verdict = judge(odd, report("x"), SENT_GEN_2)
    assert (verdict.outcome, verdict.reason) == (Outcome.REFUSE, RefusalReason.MALFORMED)
    assert sender_of(odd) == "x"
