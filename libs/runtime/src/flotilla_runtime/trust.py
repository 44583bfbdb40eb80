"""Refusing what a member may not say: counted per reason, reported once per sender, reason and window.

A service that refuses a member's message (a report for another cluster's command, a body that names
another cluster than its subject, a node over the quota) calls `RefusalLedger.refuse`. Every refusal
increments `flotilla_member_refused_total{reason}`; only the first of a (cluster, reason) pair in a window
returns a `MemberRefused` event for the caller to emit, carrying the count since the previous one. The
ledger's memory is bounded (`max_senders` pairs, the oldest forgotten first), and the sender is always
the cluster the bus vouched for (the subject's tokens, which the server's grant restricts), never a
field of the body; so a flood of invented names makes one event per window, not one per message.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from flotilla_contracts import catalogue
from flotilla_contracts.v1.security import MemberRefused, RefusalReason
from flotilla_runtime.metrics import Registry

log = logging.getLogger("flotilla.trust")

DEFAULT_WINDOW_S = 60.0
DEFAULT_MAX_SENDERS = 10_000


@dataclass
class _Window:
    opened_at: float
    refused: int = 0  # refusals not yet reported


class RefusalLedger:
    """Counts refusals and decides which of them become a security event (see the module docstring)."""

    def __init__(
        self,
        service: str,
        metrics: Registry | None = None,
        *,
        window_s: float = DEFAULT_WINDOW_S,
        max_senders: int = DEFAULT_MAX_SENDERS,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.service = service
        self.window_s = window_s
        self.max_senders = max_senders
        self._clock = clock or time.monotonic
        self._windows: OrderedDict[tuple[str, RefusalReason], _Window] = OrderedDict()
        self.totals: dict[RefusalReason, int] = dict.fromkeys(RefusalReason, 0)
        self._counter = (
            metrics.counter(
                "flotilla_member_refused_total",
                "Messages from member clusters refused, by reason (see docs/security.md)",
                ("reason",),
            )
            if metrics is not None
            else None
        )

    def refuse(
        self, cluster_id: str, reason: RefusalReason, *, node: str = "", subject: str = "", detail: str = ""
    ) -> MemberRefused | None:
        """Count one refusal; the event to emit when it opens a new window for (cluster, reason), else None."""
        self.totals[reason] += 1
        if self._counter is not None:
            self._counter.inc(reason=reason.value)
        key = (cluster_id, reason)
        now = self._clock()
        window = self._windows.get(key)
        if window is not None and now - window.opened_at < self.window_s:
            window.refused += 1
            return None
        refused = 1 + (window.refused if window is not None else 0)
        self._windows[key] = _Window(opened_at=now)
        self._windows.move_to_end(key)
        while len(self._windows) > self.max_senders:
            self._windows.popitem(last=False)
        log.warning(
            "refused a message from cluster %s: %s (%s); further ones in the next %.0f s are counted only",
            cluster_id,
            reason.value,
            detail or subject,
            self.window_s,
            extra={"cluster_id": cluster_id, "node": node, "reason": reason.value},
        )
        return MemberRefused(
            service=self.service,
            cluster_id=cluster_id,
            node=node[:256],
            reason=reason,
            subject=subject[:1024],
            detail=detail[:4096],
            refused=refused,
            window_s=self.window_s,
            occurred_at=datetime.now(UTC),
        )

    def subject_for(self, event: MemberRefused) -> str:
        """Where `event` goes: `fleet.v1.evt.security.<service>.<cluster>.refused`."""
        return catalogue.subject_for(MemberRefused, service=self.service, cluster_id=event.cluster_id)
