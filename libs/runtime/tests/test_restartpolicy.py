"""The local supervisor's restart policy: exponential back-off from the crash history, restarts asked for apart."""

from __future__ import annotations

import signal

from flotilla_runtime.restartpolicy import Backoff, Decision, decide, describe_exit

POLICY = Backoff(first_s=0.5, factor=2.0, max_s=30.0, stable_s=60.0)


def crash_after(streak: int, up_for_s: float = 1.0) -> Decision:
    return decide(POLICY, streak, up_for_s, requested=False)


def test_the_first_crash_waits_the_first_delay() -> None:
    assert crash_after(0) == Decision(delay_s=0.5, streak=1, crash=True)


def test_crashes_in_a_row_double_the_delay_up_to_the_cap() -> None:
    streak, delays = 0, []
    for _ in range(10):
        decision = crash_after(streak)
        streak = decision.streak
        delays.append(decision.delay_s)
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]
    assert streak == 10


def test_a_process_that_stayed_up_long_enough_starts_afresh() -> None:
    assert crash_after(7, up_for_s=60.0) == Decision(delay_s=0.5, streak=1, crash=True)
    assert crash_after(7, up_for_s=59.9).delay_s == 30.0


def test_a_restart_asked_for_is_immediate_and_neither_counts_nor_resets_the_streak() -> None:
    assert decide(POLICY, 4, 0.1, requested=True) == Decision(delay_s=0.0, streak=4, crash=False)
    assert decide(POLICY, 4, 600.0, requested=True).streak == 4


def test_exit_statuses_read_as_a_person_would_say_them() -> None:
    assert describe_exit(0) == "code 0"
    assert describe_exit(3) == "code 3"
    assert describe_exit(-signal.SIGKILL) == "signal SIGKILL"
    assert describe_exit(-signal.SIGTERM) == "signal SIGTERM"
