"""Who did what, when: the event log read as an audit trail, one entry per command a person (or `admin`) sent.

Every event a command causes carries its actor (the `Flotilla-Actor` header, set by the service from the subject
the bus let the sender publish on) and the command's trace. The events one command caused share both, so an
entry is the group of them: the first says what happened (a rollout started, paused; a cluster approved), the
count says how much followed in the same transaction. What the event log does not hold (a refused command, a
read) is not in the audit.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import msgspec

from flotilla_client.events import EventRecord
from flotilla_contracts import subjects


class AuditEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One command as the event log remembers it."""

    time: datetime
    actor: str
    object: str  # `rollout/r-…`, `cluster/c1`, `subscription/web`, `rollout-cluster/r-….c1`
    action: str  # the first event: `started`, `approved`, a state change as `Paused`
    detail: str = ""  # its message or reason, when it has one
    events: int = 1  # events the command caused
    trace_id: str = ""
    first_seq: int = 0


def object_of(subject: str) -> str:
    """`fleet.v1.evt.rollout.r-1.state-changed` -> `rollout/r-1` (entity, then its ids joined by dots)."""
    tokens = subject.removeprefix(f"{subjects.EVT_PREFIX}.").split(".")
    if len(tokens) < 3:
        return subject
    return f"{tokens[0]}/{'.'.join(tokens[1:-1])}"


def action_of(subject: str, data: Any) -> str:
    """The event's name (its last subject token); a state change says the state it went to."""
    name = subject.rsplit(".", 1)[-1]
    if name == "state-changed" and isinstance(data, dict) and isinstance(data.get("to"), str):
        return str(data["to"])
    return name


def detail_of(data: Any) -> str:
    if not isinstance(data, dict):
        return ""
    for key in ("message", "reason"):
        value = data.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def entries(records: Iterable[EventRecord], actor: str | None = None) -> list[AuditEntry]:
    """The audit trail of `records` (oldest first): one entry per (actor, trace), in the order each began;
    events no command caused are left out, and so are other actors' when `actor` is given."""
    groups: dict[tuple[str, str], list[EventRecord]] = {}
    for record in records:
        if not record.actor or (actor and record.actor != actor):
            continue
        key = (record.actor, record.trace_id or f"seq-{record.stream}-{record.seq}")  # untraced: an entry each
        groups.setdefault(key, []).append(record)
    out: list[AuditEntry] = []
    for (who, _), group in groups.items():
        first = group[0]
        out.append(
            AuditEntry(
                time=first.time,
                actor=who,
                object=object_of(first.subject),
                action=action_of(first.subject, first.data),
                detail=detail_of(first.data),
                events=len(group),
                trace_id=first.trace_id,
                first_seq=first.seq,
            )
        )
    return out
