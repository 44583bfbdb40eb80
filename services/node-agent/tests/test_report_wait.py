"""When a cluster agent reports its nodes and joins again: on schedule, or after failures later and spread out."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from flotilla_node_agent.cluster_agent import (
    JOIN_BACKOFF_FIRST_S,
    JOIN_BACKOFF_MAX_S,
    REPORT_BACKOFF_MAX_S,
    join_wait,
    report_wait,
)


def test_a_report_that_went_through_waits_the_interval() -> None:
    assert report_wait(10.0, 0, 0.9) == 10.0


def test_failed_reports_wait_longer_each_time_up_to_the_ceiling() -> None:
    waits = [report_wait(10.0, failures, 1.0) for failures in range(1, 8)]
    assert waits == sorted(waits) and waits[0] == 30.0
    assert waits[-1] == 10.0 + REPORT_BACKOFF_MAX_S


@given(st.integers(min_value=1, max_value=1_000), st.floats(min_value=0.0, max_value=1.0))
def test_a_fleet_failing_together_spreads_its_next_reports(failures: int, rand: float) -> None:
    assert 10.0 <= report_wait(10.0, failures, rand) <= 10.0 + REPORT_BACKOFF_MAX_S


def test_a_pending_cluster_asks_again_on_its_schedule() -> None:
    assert join_wait(10.0, 0, 0.3) == 10.0


def test_joins_that_went_unanswered_back_off_to_a_minute() -> None:
    ceilings = [join_wait(10.0, failures, 1.0) for failures in range(1, 8)]
    assert ceilings == [5.0, 10.0, 20.0, 40.0, 60.0, 60.0, 60.0]
    assert ceilings[-1] == JOIN_BACKOFF_MAX_S


@given(st.integers(min_value=1, max_value=1_000), st.floats(min_value=0.0, max_value=1.0))
def test_a_fleet_whose_joins_failed_together_spreads_them_over_the_whole_interval(failures: int, rand: float) -> None:
    """Full jitter: anywhere from at once to the ceiling, so 10,000 agents do not come back in step."""
    ceiling = min(JOIN_BACKOFF_FIRST_S * 2.0 ** (failures - 1), JOIN_BACKOFF_MAX_S)
    assert join_wait(10.0, failures, rand) == ceiling * rand
