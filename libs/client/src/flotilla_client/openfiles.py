"""The open-files limit a big local fleet needs: every bus connection is a descriptor in nats-server and in a sim."""

from __future__ import annotations

import resource
from dataclasses import dataclass
from pathlib import Path

NR_OPEN = Path("/proc/sys/fs/nr_open")  # the most a hard limit can be raised to (Linux)


@dataclass(frozen=True)
class OpenFiles:
    """The limit after `raise_open_files`: `soft` is what processes started from here may open."""

    soft: int
    hard: int
    wanted: int

    @property
    def enough(self) -> bool:
        return self.soft >= self.wanted

    def advice(self) -> str:
        """What to do when not `enough` (the processes still start: they refuse connections past the limit)."""
        return (
            f"the open-files limit is {self.soft} (hard {self.hard}), below the {self.wanted} this fleet may need "
            "(one per bus connection): nats-server and the sims will refuse connections past it; raise the hard "
            f"limit for your user (`ulimit -Hn {self.wanted}` as root, `nofile` in /etc/security/limits.conf, or "
            "LimitNOFILE= in a systemd unit) and start again"
        )


def _ceiling() -> int:
    try:
        return int(NR_OPEN.read_text())
    except (OSError, ValueError):
        return 1 << 20


def raise_open_files(wanted: int) -> OpenFiles:
    """Raise this process's open-files limit (inherited by everything it starts) towards `wanted`.

    The soft limit goes up to the hard one (anyone may); the hard one goes up only where allowed (root, or
    CAP_SYS_RESOURCE), at most to the kernel's `fs.nr_open`. Never lowers either."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    infinite = resource.RLIM_INFINITY
    if hard != infinite and hard < wanted:
        target = min(wanted, _ceiling())
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(target, hard)), target))
            hard = target
        except (ValueError, OSError):
            pass  # not allowed: the soft limit still goes up to the hard one below
    new_soft = hard if hard == infinite else max(soft, min(wanted, hard))
    if soft != infinite and new_soft != soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
        soft = new_soft
    return OpenFiles(soft=soft, hard=hard, wanted=wanted)
