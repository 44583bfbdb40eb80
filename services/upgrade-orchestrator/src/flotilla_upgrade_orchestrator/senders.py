"""Who may report on a step: only the node the command was sent to, speaking on its own subject.

A step report arrives on `fleet.v1.evt.node-step.<cluster>.<node>.reported`; the bus grant of the sender
restricts those tokens, so they say who sent it. Its body must name the same cluster and node, and its
command id must name a command sent to exactly that cluster and node. Anything else is refused before it
touches a rollout (docs/security.md, "Reports are authorized by sender"). Pure: the caller looks the
command up (by id, cluster and node) and passes what it found.
"""

from __future__ import annotations

from dataclasses import dataclass

from flotilla_contracts import catalogue
from flotilla_contracts.v1.agent import NodeStepReported
from flotilla_contracts.v1.security import RefusalReason

_REPORTS = catalogue.operation_for(NodeStepReported)


@dataclass(frozen=True)
class Sender:
    """The cluster and node a message was published as (the subject's tokens)."""

    cluster_id: str
    node_id: str


@dataclass(frozen=True)
class Refusal:
    reason: RefusalReason
    detail: str


def sender_of(subject: str) -> Sender | None:
    """The sender a report subject names, None when the subject is not a step report's."""
    ids = _REPORTS.ids_in(subject)
    return None if ids is None else Sender(ids["cluster_id"], ids["node_id"])


def check_body(sender: Sender, report: NodeStepReported) -> Refusal | None:
    """A body that speaks for another cluster or node than its subject is refused."""
    if (report.cluster_id, report.node_id) != (sender.cluster_id, sender.node_id):
        return Refusal(
            RefusalReason.SUBJECT_BODY_MISMATCH,
            f"report on {sender.cluster_id}/{sender.node_id}'s subject names {report.cluster_id}/{report.node_id}",
        )
    return None


def check_report(sender: Sender, report: NodeStepReported, sent_to: Sender | None) -> Refusal | None:
    """None when `sender` may make this report; `sent_to` is where the named command went (None: nowhere)."""
    mismatch = check_body(sender, report)
    if mismatch is not None:
        return mismatch
    if sent_to != sender:
        return Refusal(
            RefusalReason.NOT_OWN_COMMAND,
            f"{report.outcome.value} report from {sender.cluster_id}/{sender.node_id} on command "
            f"{report.command_id}, which was not sent to that node",
        )
    return None
