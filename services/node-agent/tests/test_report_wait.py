"""When a cluster agent reports its nodes again: on schedule, or after failures later and spread out."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from flotilla_node_agent.cluster_agent import REPORT_BACKOFF_MAX_S, report_wait


def test_a_report_that_went_through_waits_the_interval() -> None:
    assert report_wait(10.0, 0, 0.9) == 10.0


def test_failed_reports_wait_longer_each_time_up_to_the_ceiling() -> None:
    waits = [report_wait(10.0, failures, 1.0) for failures in range(1, 8)]
    assert waits == sorted(waits) and waits[0] == 30.0
    assert waits[-1] == 10.0 + REPORT_BACKOFF_MAX_S


@given(st.integers(min_value=1, max_value=1_000), st.floats(min_value=0.0, max_value=1.0))
def test_a_fleet_failing_together_spreads_its_next_reports(failures: int, rand: float) -> None:
    assert 10.0 <= report_wait(10.0, failures, rand) <= 10.0 + REPORT_BACKOFF_MAX_S
