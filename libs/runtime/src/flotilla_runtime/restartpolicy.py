"""When something that died is started again: exponential back-off decided from plain values, no clock.

Used by the local supervisor (`flotilla up`) for processes and by the runtime for a service's background loops.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """0.5 s after the first crash, doubling up to 30 s; a process that stayed up `stable_s` starts afresh."""

    first_s: float = 0.5
    factor: float = 2.0
    max_s: float = 30.0
    stable_s: float = 60.0


@dataclass(frozen=True)
class Decision:
    """What to do after an exit: wait `delay_s`, then start again; `streak` is the crash count to carry on."""

    delay_s: float
    streak: int
    crash: bool  # counts as a crash (not a restart someone asked for)


def decide(policy: Backoff, streak: int, up_for_s: float, requested: bool) -> Decision:
    """The delay before the next start, from the crashes in a row so far and how long the last process ran.

    A restart someone asked for (`flotilla restart`) starts at once and neither counts nor breaks the streak.
    """
    if requested:
        return Decision(delay_s=0.0, streak=streak, crash=False)
    streak = 1 if up_for_s >= policy.stable_s else streak + 1
    delay = min(policy.first_s * policy.factor ** (streak - 1), policy.max_s)
    return Decision(delay_s=delay, streak=streak, crash=True)


def describe_exit(returncode: int) -> str:
    """`code 3` or `signal SIGKILL` for a `Popen.returncode` (negative: killed by that signal)."""
    if returncode >= 0:
        return f"code {returncode}"
    try:
        return f"signal {signal.Signals(-returncode).name}"
    except ValueError:
        return f"signal {-returncode}"
