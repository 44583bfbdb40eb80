"""Our own outage is not the fleet's silence: after heartbeat's bus link was down, or heartbeats were dropped on
their way to it, nobody is judged at once.

While heartbeat cannot hear the bus (nats-server restarting, a network pause, or nats-server cutting it off as a
slow consumer), every node looks silent to it, and after the bus returns each agent still has to reconnect and
pass the auth callout, with back-off. Judging nodes by the silence heartbeat itself caused would report a healthy
fleet Unreachable; so, as after its own start, it holds every Unreachable or Lost verdict for the startup grace,
counted from the last moment its link was seen down.

Heartbeats dropped for it without a disconnect are the same silence: nats-py drops a message when the
subscription's pending limits are full (a `SlowConsumerError` each, counted by the runtime's BusErrors and
`SlowConsumerWatch`). nats-server itself never drops single messages for a client: past `max_pending` (or its
write deadline) it closes the connection, which is a link outage here. Either way, verdicts are held for the
startup grace after the last drop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import nats.errors

from flotilla_contracts.subjects import HB_PARTITION_PREFIX, HB_PREFIX

# (how many times the link has gone down so far, whether it is up now): read from the service's Lifeline.
LinkReading = Callable[[], tuple[int, bool]]
# How many heartbeats were dropped before they reached the service, so far.
DropReading = Callable[[], int]


def always_up() -> tuple[int, bool]:
    return 0, True


def no_drops() -> int:
    return 0


@dataclass
class Deafness:
    link: LinkReading = always_up
    dropped: DropReading = no_drops
    seen: int = 0
    seen_dropped: int = 0

    def hold_until(self, now: float, grace_s: float) -> float | None:
        """When the link is down, went down, or heartbeats were dropped since the last look: hold verdicts
        until `now + grace_s`."""
        outages, up = self.link()
        dropped = self.dropped()
        if outages == self.seen and up and dropped == self.seen_dropped:
            return None
        self.seen, self.seen_dropped = outages, dropped
        return now + grace_s

    def began(self, outages_before: int) -> bool:
        """Whether an outage was noticed since `outages_before` (for a log line once per outage)."""
        return self.seen != outages_before


@dataclass
class SlowConsumerWatch:
    """Counts the heartbeats nats-py dropped for this replica (a BusErrors drop listener); `dropped` is what
    `Deafness.dropped` reads. Drops on other subjects (replies, events) are not heartbeats and are not counted."""

    dropped: int = 0
    last_subject: str = ""

    def __call__(self, error: nats.errors.SlowConsumerError) -> None:
        if error.subject.startswith((f"{HB_PREFIX}.", f"{HB_PARTITION_PREFIX}.")):
            self.dropped += 1
            self.last_subject = error.subject
