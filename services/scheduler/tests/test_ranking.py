"""One ranking key for placement: the ranked list, the spread pick and the load index's fast path agree with it."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from flotilla_scheduler.fleet import SORT_AT_MOST, WALK_AT_MOST_LOADS, ClusterView, Fleet
from flotilla_scheduler.placement import pick, ranked
from flotilla_scheduler.ranking import rank_key

ZONE = "zone"


def fleet_of(loads: dict[str, int], zones: dict[str, str]) -> Fleet:
    fleet = Fleet(ClusterView(cluster_id=c, labels={ZONE: zones[c]} if zones.get(c) else {}) for c in loads)
    for c, load in loads.items():
        fleet.set_load(c, load)
    return fleet


def by_key(loads: dict[str, int], penalty: dict[str, int]) -> list[str]:
    return sorted(loads, key=lambda c: rank_key(c, loads[c], penalty=penalty.get(c, 0)))


def greedy_spread(
    loads: dict[str, int], zones: dict[str, str], penalty: dict[str, int], slots: int, taken: list[str]
) -> list[str]:
    """The key applied by hand: each slot to the best key, spread = clusters of its zone chosen or taken so far."""
    counts: dict[str, int] = {}
    for c in taken:
        counts[zones.get(c, "")] = counts.get(zones.get(c, ""), 0) + 1
    left, chosen = set(loads) - set(taken), list[str]()
    while left and len(chosen) < slots:
        best = min(
            left,
            key=lambda c: rank_key(c, loads[c], penalty=penalty.get(c, 0), spread=counts.get(zones.get(c, ""), 0)),
        )
        chosen.append(best)
        left.discard(best)
        counts[zones.get(best, "")] = counts.get(zones.get(best, ""), 0) + 1
    return chosen


@st.composite
def fleets(draw: st.DrawFn) -> tuple[dict[str, int], dict[str, str], dict[str, int]]:
    n = draw(st.integers(1, 150))
    distinct = draw(st.sampled_from([1, 3, 20, WALK_AT_MOST_LOADS, WALK_AT_MOST_LOADS + 40]))
    ids = [f"c{i:03d}" for i in draw(st.permutations(range(n)))]
    loads = {c: draw(st.integers(0, distinct - 1)) for c in ids}
    zones = {c: draw(st.sampled_from(["", "a", "b", "c"])) for c in ids}
    penalty = {c: p for c in ids if (p := draw(st.integers(0, 2)))}
    return loads, zones, penalty


def test_rank_key_prefers_fewer_penalties_then_spread_then_load_then_id() -> None:
    assert rank_key("z", 9, penalty=0, spread=5) < rank_key("a", 0, penalty=1, spread=0)
    assert rank_key("z", 9, spread=0) < rank_key("a", 0, spread=1)
    assert rank_key("z", 0) < rank_key("a", 1)
    assert rank_key("a", 1) < rank_key("b", 1)


def test_least_loaded_takes_both_of_its_paths_in_key_order() -> None:
    big = {f"c{i:03d}": (i * 7) % 5 for i in range(SORT_AT_MOST * 3)}  # many clusters, few loads: the bucket walk
    fleet = fleet_of(big, {})
    assert fleet.least_loaded(set(big), 40) == by_key(big, {})[:40]
    spread_out = {f"c{i:03d}": i for i in range(WALK_AT_MOST_LOADS + 10)}  # many distinct loads: a plain sort
    fleet = fleet_of(spread_out, {})
    assert fleet.least_loaded(set(spread_out), 12) == by_key(spread_out, {})[:12]


@settings(max_examples=200, deadline=None)
@given(fleets(), st.integers(1, 40))
def test_the_three_orders_agree_with_the_key(
    drawn: tuple[dict[str, int], dict[str, str], dict[str, int]], slots: int
) -> None:
    loads, zones, penalty = drawn
    fleet = fleet_of(loads, zones)
    everyone = set(loads)
    assert fleet.least_loaded(everyone, slots) == by_key(loads, {})[:slots]
    assert ranked(fleet, everyone, {}) == by_key(loads, {})
    assert ranked(fleet, everyone, penalty) == by_key(loads, penalty)
    assert ranked(fleet, everyone, penalty, slots) == by_key(loads, penalty)[:slots]
    assert pick(fleet, everyone, slots, None, (), penalty) == by_key(loads, penalty)[:slots]
    assert pick(fleet, everyone, slots, ZONE, (), penalty) == greedy_spread(loads, zones, penalty, slots, [])
    taken = sorted(everyone)[: len(everyone) // 3]
    rest = everyone - set(taken)
    expected = greedy_spread(loads, zones, penalty, slots, taken)
    assert pick(fleet, rest, slots, ZONE, taken, penalty) == expected
