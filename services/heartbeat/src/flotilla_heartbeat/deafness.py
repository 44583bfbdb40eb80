"""Our own outage is not the fleet's silence: after heartbeat's bus link was down, nobody is judged at once.

While heartbeat cannot hear the bus (nats-server restarting, a network pause), every node looks silent to it,
and after the bus returns each agent still has to reconnect and pass the auth callout, with back-off. Judging
nodes by the silence heartbeat itself caused would report a healthy fleet Unreachable; so, as after its own
start, it holds every Unreachable or Lost verdict for the startup grace, counted from the last moment its link
was seen down.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# (how many times the link has gone down so far, whether it is up now): read from the service's Lifeline.
LinkReading = Callable[[], tuple[int, bool]]


def always_up() -> tuple[int, bool]:
    return 0, True


@dataclass
class Deafness:
    link: LinkReading = always_up
    seen: int = 0

    def hold_until(self, now: float, grace_s: float) -> float | None:
        """When the link is down, or went down since the last look: hold verdicts until `now + grace_s`."""
        outages, up = self.link()
        if outages == self.seen and up:
            return None
        self.seen = outages
        return now + grace_s

    def began(self, outages_before: int) -> bool:
        """Whether an outage was noticed since `outages_before` (for a log line once per outage)."""
        return self.seen != outages_before
