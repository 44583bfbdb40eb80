"""Requests nobody waits for any more: the sender's `Flotilla-Reply-By` header, and dropping what is past it.

A member's request (a cluster agent's node report, a join) times out at its sender after a few seconds and is
sent again later. When a service falls behind, its queue fills with requests whose senders have stopped
waiting; answering them in order costs what a fresh one costs, so every answer comes too late, the retries join
the queue, and the service never catches up (seen at 5,000 x 10: registration answered node reports minutes
late, each answer refused by the bus as a response past its permission, while 5,000 clusters sent theirs again
every 10 s; docs/scale.md). A sender says when it stops waiting (`reply_by_headers`); a service drops a request
it reaches later than that by more than `SKEW_S` (`lateness`), unanswered, and counts it.

The time is the sender's clock: a sender whose clock is behind the service's by more than its timeout plus
`SKEW_S` would have every request dropped, so the service logs those drops with the sender's subject and how late
they were (a clock that far off also breaks bus grants, whose expiry is the registration's clock).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from flotilla_contracts.envelope import H_REPLY_BY

SKEW_S = 2.0  # clocks of a fleet agree to within this (NTP); a request is dropped only past it


def reply_by_headers(timeout_s: float, now: float | None = None) -> dict[str, str]:
    """The header a requester adds: it waits `timeout_s` from now."""
    return {H_REPLY_BY: f"{(time.time() if now is None else now) + timeout_s:.3f}"}


def lateness(headers: Mapping[str, str] | None, now: float) -> float:
    """How many seconds past its sender's reply-by time (and the skew allowance) a request is; 0.0 when it is
    still awaited, carries no reply-by time, or a malformed one (never dropped for a header we cannot read)."""
    if not headers:
        return 0.0
    text = headers.get(H_REPLY_BY)
    if not text:
        return 0.0
    try:
        deadline = float(text)
    except ValueError:
        return 0.0
    return max(0.0, now - deadline - SKEW_S)
