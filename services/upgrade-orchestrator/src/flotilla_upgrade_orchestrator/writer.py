"""Who writes a rollout, said in its status: the lease holder as this replica last saw it (I6).

A replica that does not hold a rollout's lease, or holds one older than the epoch a newer writer stored
(failover.Fence), does not act on it and used to say so only in its log. `describe` turns what this
replica knows (its own lease, the last lease value it read, the epoch on the rollout) into the status's
`writer`, so an operator sees "written by <instance> at epoch N", "fenced", or that nobody writes a rollout
still moving (NoProgress does not cover that case: a process without the lease writes nothing).
"""

from __future__ import annotations

from dataclasses import dataclass

from flotilla_contracts.v1.upgrade_status import Writer
from flotilla_upgrade_orchestrator.lease import LeaseValue
from flotilla_upgrade_orchestrator.model import Rollout


@dataclass(frozen=True)
class LeaseView:
    """What this replica knows of one rollout's lease: its own instance id and held epoch, the last value read."""

    instance_id: str
    held: int | None  # our lease epoch (before the fence), None when we do not hold it
    seen: LeaseValue | None = None
    now: float = 0.0  # POSIX seconds, to judge whether the seen lease is still live


def describe(rollout: Rollout, view: LeaseView) -> Writer:
    """The status's `writer`; pure."""
    me, stored = view.instance_id, rollout.rec.epoch
    if view.held is not None and view.held >= stored:
        return Writer(
            instance_id=me,
            epoch=view.held,
            held_here=True,
            answered_by=me,
            message=f"written by {me} (the replica that answered) at epoch {view.held}",
        )
    if view.held is not None:
        return Writer(
            instance_id=me,
            epoch=view.held,
            fenced=True,
            answered_by=me,
            message=(
                f"{me} holds the lease at epoch {view.held} but a newer writer stored epoch {stored} on the "
                "rollout: fenced, it does not act until the lease is its own again"
            ),
        )
    seen = view.seen
    if seen is not None and seen.expires_at > view.now:
        return Writer(
            instance_id=seen.owner,
            epoch=seen.epoch,
            answered_by=me,
            message=f"written by {seen.owner} at epoch {seen.epoch} (this replica, {me}, does not hold the lease)",
        )
    last = f" (last holder {seen.owner} at epoch {seen.epoch}, lease expired)" if seen is not None else ""
    if rollout.final:
        return Writer(epoch=stored, answered_by=me, message=f"finished; no replica holds the lease{last}")
    return Writer(
        epoch=stored,
        answered_by=me,
        message=(
            f"this replica ({me}) does not hold the lease and saw no live holder{last}: nobody writes this "
            "rollout until a replica takes the lease (is an upgrade-orchestrator with the lease running?)"
        ),
    )
