"""The fleet disruption rule: thresholds, the window, hysteresis, label groups, the minimum, settings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from flotilla_runtime.disruption import FLEET, DisruptionSettings, Policy, Watch
from flotilla_runtime.errors import SettingsError

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def fleet(n: int, policy: Policy | None = None, labels: dict[str, dict[str, str]] | None = None) -> Watch:
    watch = Watch(policy or Policy(window_s=60))
    for i in range(n):
        watch.put(f"c{i}", (labels or {}).get(f"c{i}", {}), None)
    watch.judge(T0)
    return watch


def down(watch: Watch, ids: range | list[int], when: float, labels: dict[str, str] | None = None) -> list[bool]:
    """Each cluster goes Unreachable at `when`, judged one by one: whether the fleet is disrupted after each."""
    verdicts = []
    for i in ids:
        watch.put(f"c{i}", labels or {}, at(when))
        watch.judge(at(when))
        verdicts.append((FLEET, "") in watch.disrupted)
    return verdicts


def up(watch: Watch, ids: range | list[int], when: float) -> list[bool]:
    verdicts = []
    for i in ids:
        watch.put(f"c{i}", {}, None)
        watch.judge(at(when))
        verdicts.append((FLEET, "") in watch.disrupted)
    return verdicts


def test_the_fleet_is_disrupted_exactly_when_the_share_is_reached_within_the_window() -> None:
    watch = fleet(50)
    verdicts = down(watch, range(30), 10)
    assert verdicts.index(True) == 27  # 28 of 50 = 56% >= 55%; 27 = 54% is not
    found = watch.disrupted[(FLEET, "")]
    assert (found.unreachable, found.total, found.since) == (28, 50, at(10))
    assert watch.holds({})


def test_a_slow_trickle_of_losses_is_no_disruption() -> None:
    watch = fleet(50)
    for i in range(40):  # one every 10 s: never more than 7 within a 60 s window
        assert down(watch, [i], 10 * i) == [False]
    assert not watch.disrupted


def test_hysteresis_it_recovers_below_the_lower_share_not_at_the_threshold() -> None:
    watch = fleet(50)
    down(watch, range(30), 10)
    assert up(watch, range(12), 20) == [True] * 12  # 18 of 50 = 36% still Unreachable: still disrupted
    assert up(watch, [12], 20) == [False]  # 17 of 50 = 34% < 35%
    change_back = down(watch, [0, 1, 2], 21)  # two more than the recovery share, but not a burst of 55%
    assert change_back == [False, False, False]


def test_judge_reports_what_began_and_what_ended_once() -> None:
    watch = fleet(10)
    changes = []
    for i in range(10):
        watch.put(f"c{i}", {}, at(5))
        changes.append(watch.judge(at(5)))
    began = [c for c in changes if c.began]
    assert len(began) == 1 and not any(c.ended for c in changes)
    for i in range(10):
        watch.put(f"c{i}", {}, None)
        changes.append(watch.judge(at(9)))
    ended = [c for c in changes if c.ended]
    assert len(ended) == 1 and ended[0].ended[0].since == at(5)


def test_too_few_clusters_are_never_a_disruption() -> None:
    watch = fleet(2)
    assert down(watch, range(2), 1) == [False, False]  # 100%, but fewer than min_clusters (3)


def test_a_label_group_is_judged_on_its_own() -> None:
    policy = Policy(window_s=60, group_label="region")
    labels = {f"c{i}": {"region": "eu" if i < 10 else "us"} for i in range(50)}
    watch = fleet(50, policy, labels)
    down(watch, range(6), 3, {"region": "eu"})  # 6 of 10 in eu, 6 of 50 in the fleet
    assert set(watch.disrupted) == {("region", "eu")}
    assert watch.holds({"region": "eu"}) and not watch.holds({"region": "us"}) and not watch.holds({})


def test_members_that_leave_count_no_more() -> None:
    watch = fleet(10)
    down(watch, range(6), 1)
    assert watch.disrupted
    for i in range(6):
        watch.drop(f"c{i}")  # deregistered: 0 of 4 Unreachable
    watch.judge(at(2))
    assert not watch.disrupted


def test_a_restored_verdict_stands_until_the_next_change() -> None:
    watch = fleet(10)
    down(watch, range(6), 1)
    restored = Watch(watch.policy, watch.disrupted.values())
    for i in range(10):
        restored.put(f"c{i}", {}, at(1) if i < 6 else None)
    restored.settle()
    assert restored.disrupted == watch.disrupted
    assert not restored.judge(at(500))  # nothing touched since: nothing judged
    restored.put("c0", {}, None)
    assert not restored.judge(at(501))  # 5 of 10 still Unreachable: above the recovery share


def test_a_disabled_policy_judges_nothing() -> None:
    watch = fleet(10, Policy(enabled=False))
    assert down(watch, range(10), 1) == [False] * 10


@pytest.mark.parametrize(
    ("field", "value", "variable"),
    [
        ("disruption_share", 0.0, "DISRUPTION_SHARE"),
        ("disruption_share", 1.5, "DISRUPTION_SHARE"),
        ("disruption_recover_share", 0.9, "DISRUPTION_RECOVER_SHARE"),
        ("disruption_window_s", 0.0, "DISRUPTION_WINDOW_S"),
        ("disruption_min_clusters", 0, "DISRUPTION_MIN_CLUSTERS"),
    ],
)
def test_settings_out_of_range_name_the_variable(field: str, value: float, variable: str) -> None:
    settings = DisruptionSettings(**{field: value})  # type: ignore[arg-type]
    with pytest.raises(SettingsError, match=f"FLOTILLA_X_{variable}"):
        settings.disruption_policy("FLOTILLA_X_")
    assert DisruptionSettings().disruption_policy("FLOTILLA_X_") == Policy()
