"""Which applied reports a cluster agent may make: about its own cluster, for what was sent to it (pure rules).

The sender is the cluster in the report's subject (`fleet.v1.evt.applied.<cluster>.<subscription>.reported`):
the bus grant lets a cluster publish only under its own token, while the body is whatever it chose to write.
So a body naming another cluster or subscription than its subject is refused, and so is a report about a
subscription never sent to the sender, or a generation newer than the one sent: neither answers a command
that cluster received. Refused reports change nothing; the caller counts them (flotilla_runtime.trust).
A report that is merely late (its subscription deleted, or an older generation) is ignored, not refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from flotilla_contracts import catalogue
from flotilla_contracts.v1.scheduler_events import AppliedStatusReported
from flotilla_contracts.v1.security import RefusalReason

_OPERATION = catalogue.operation_for(AppliedStatusReported)
_CLUSTER_TOKEN = _OPERATION.subject.split(".").index("{cluster_id}")


class Outcome(Enum):
    RECORD = "record"  # store the status
    IGNORE = "ignore"  # late or about nothing we keep: drop quietly
    REFUSE = "refuse"  # not this sender's to say: count and report


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    reason: RefusalReason | None = None
    detail: str = ""


RECORD = Verdict(Outcome.RECORD)
IGNORE = Verdict(Outcome.IGNORE)


def _refuse(reason: RefusalReason, detail: str) -> Verdict:
    return Verdict(Outcome.REFUSE, reason, detail)


@dataclass(frozen=True)
class Sent:
    """What the scheduler's tables say about one subscription and the sender cluster."""

    subscription_known: bool
    generation: int | None  # the newest generation sent to the sender cluster; None: never sent there


def subject_ids(subject: str) -> Mapping[str, str] | None:
    """`cluster_id` and `subscription` of an applied-report subject, or None when it is not of that pattern."""
    return _OPERATION.ids_in(subject)


def sender_of(subject: str) -> str:
    """The cluster the bus vouched for: the subject's cluster token, even when the rest of it is malformed."""
    tokens = subject.split(".")
    return tokens[_CLUSTER_TOKEN] if len(tokens) > _CLUSTER_TOKEN else ""


def judge(subject: str, report: AppliedStatusReported, sent: Sent) -> Verdict:
    """Record, ignore or refuse one applied report received on `subject` (see the module docstring)."""
    ids = subject_ids(subject)
    if ids is None:
        return _refuse(RefusalReason.MALFORMED, f"not an applied-report subject: {subject[:200]}")
    sender = ids["cluster_id"]
    if report.cluster_id != sender:
        return _refuse(
            RefusalReason.SUBJECT_BODY_MISMATCH, f"cluster {sender} reported for cluster {report.cluster_id}"
        )
    if report.subscription != ids["subscription"]:
        return _refuse(
            RefusalReason.SUBJECT_BODY_MISMATCH,
            f"the subject names subscription {ids['subscription']}, the body {report.subscription}",
        )
    if not sent.subscription_known:
        return IGNORE
    if sent.generation is None:
        return _refuse(
            RefusalReason.NOT_OWN_COMMAND, f"subscription {report.subscription} was never sent to cluster {sender}"
        )
    if report.generation > sent.generation:
        return _refuse(
            RefusalReason.NOT_OWN_COMMAND,
            f"generation {report.generation} of {report.subscription} was never sent to cluster {sender} "
            f"(the newest sent is {sent.generation})",
        )
    return RECORD
