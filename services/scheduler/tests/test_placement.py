"""Placement rules as a user would notice them, plus Hypothesis properties over random fleets and policies."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from unittest.mock import patch

from hypothesis import given, settings
from hypothesis import strategies as st

from flotilla_contracts.v1.common import Resources, Taint, TaintEffect
from flotilla_contracts.v1.heartbeat import ClusterHealth
from flotilla_contracts.v1.scheduler import (
    PlacementPolicy,
    StaticWeight,
    Strategy,
    Toleration,
    TolerationOperator,
    Weighting,
)
from flotilla_scheduler import fleet as fleet_module
from flotilla_scheduler.divide import ideal_split, steady_split
from flotilla_scheduler.fleet import UNREACHABLE_TAINT, ClusterView, Fleet
from flotilla_scheduler.placement import Decision, Placement, compile_policy, place

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def cluster(cid: str, region: str = "eu", **kw: object) -> ClusterView:
    labels = {"region": region, "env": "prod", **kw.pop("labels", {})}  # type: ignore[dict-item]
    return ClusterView(cluster_id=cid, labels=labels, **kw)  # type: ignore[arg-type]


def run(
    policy: PlacementPolicy, fleet: Fleet, current: dict[str, Placement] | None = None, now: datetime = NOW
) -> Decision:
    return place(compile_policy(policy), fleet, current or {}, now)


def shares(decision: Decision) -> dict[str, int | None]:
    return {c: p.replicas for c, p in decision.placements.items()}


def test_replicate_goes_to_every_matching_cluster_and_nowhere_else() -> None:
    fleet = Fleet([cluster("a"), cluster("b", labels={"env": "dev"}), cluster("c", region="us")])
    decision = run(PlacementPolicy(selector="env=prod"), fleet)
    assert shares(decision) == {"a": None, "c": None}
    assert decision.added == ["a", "c"]


def test_notin_and_absent_key_selectors_filter_too() -> None:
    fleet = Fleet([cluster("a"), cluster("b", region="us"), cluster("c", labels={"gpu": "yes"})])
    assert set(run(PlacementPolicy(selector="region notin (us),!gpu"), fleet).placements) == {"a"}


def test_noschedule_keeps_new_placements_off_but_lets_existing_stay() -> None:
    taint = Taint(key="maintenance", effect=TaintEffect.NO_SCHEDULE)
    fleet = Fleet([cluster("a", taints=(taint,)), cluster("b")])
    assert set(run(PlacementPolicy(), fleet).placements) == {"b"}
    current = {"a": Placement("a", None, NOW)}
    assert set(run(PlacementPolicy(), fleet, current).placements) == {"a", "b"}


def test_noexecute_evicts_unless_tolerated_and_prefer_only_lowers_the_score() -> None:
    evict = Taint(key="dedicated", value="gpu", effect=TaintEffect.NO_EXECUTE)
    prefer = Taint(key="old", effect=TaintEffect.PREFER_NO_SCHEDULE)
    fleet = Fleet([cluster("a", taints=(evict,)), cluster("b", taints=(prefer,)), cluster("c")])
    current = {"a": Placement("a", None, NOW)}
    assert set(run(PlacementPolicy(), fleet, current).placements) == {"b", "c"}
    tolerant = PlacementPolicy(tolerations=[Toleration(key="dedicated", value="gpu")])
    assert set(run(tolerant, fleet, current).placements) == {"a", "b", "c"}
    assert set(run(PlacementPolicy(max_clusters=1), fleet).placements) == {"c"}


def test_unreachable_cluster_keeps_its_share_until_toleration_seconds_then_moves() -> None:
    since = NOW - timedelta(seconds=30)
    down = cluster("a", health=ClusterHealth.UNREACHABLE, health_since=since)
    fleet = Fleet([down, cluster("b"), cluster("c")])
    policy = PlacementPolicy(
        strategy=Strategy.DIVIDE,
        replicas=6,
        tolerations=[
            Toleration(
                key=UNREACHABLE_TAINT,
                operator=TolerationOperator.EXISTS,
                effect=TaintEffect.NO_EXECUTE,
                toleration_seconds=60,
            )
        ],
    )
    current = {c: Placement(c, 2, NOW - timedelta(hours=1)) for c in "abc"}
    early = run(policy, fleet, current)
    assert not early.changed
    assert early.next_check == since + timedelta(seconds=60)
    late = run(policy, fleet, current, now=since + timedelta(seconds=61))
    assert late.removed == ["a"]
    assert shares(late) == {"b": 3, "c": 3}
    assert late.moved_replicas == 2
    assert late.placements["b"].since == current["b"].since


def test_max_clusters_spreads_over_regions_and_prefers_less_loaded() -> None:
    fleet = Fleet([cluster("eu1"), cluster("eu2"), cluster("us1", region="us"), cluster("us2", region="us")])
    fleet.set_load("eu1", 5)
    fleet.set_load("us1", 5)
    decision = run(PlacementPolicy(max_clusters=2, spread_topology_key="region"), fleet)
    assert set(decision.placements) == {"eu2", "us2"}


def test_steady_keeps_current_placements_even_when_another_cluster_scores_better() -> None:
    fleet = Fleet([cluster("a"), cluster("b")])
    fleet.set_load("a", 100)
    current = {"a": Placement("a", None, NOW)}
    assert set(run(PlacementPolicy(max_clusters=1), fleet, current).placements) == {"a"}


def test_divide_by_static_weights_and_by_capacity() -> None:
    fleet = Fleet(
        [
            cluster("a", allocatable=Resources(cpu_millis=3000)),
            cluster("b", region="us", allocatable=Resources(cpu_millis=1000)),
        ]
    )
    static = PlacementPolicy(
        strategy=Strategy.DIVIDE,
        replicas=10,
        static_weights=[StaticWeight(selector="region=eu", weight=4), StaticWeight(cluster_ids=["b"], weight=1)],
    )
    assert shares(run(static, fleet)) == {"a": 8, "b": 2}
    capacity = PlacementPolicy(strategy=Strategy.DIVIDE, replicas=8, weighting=Weighting.CAPACITY)
    assert shares(run(capacity, fleet)) == {"a": 6, "b": 2}


def test_divide_beyond_the_maximum_reports_unplaced_replicas() -> None:
    fleet = Fleet([cluster("a"), cluster("b")])
    policy = PlacementPolicy(strategy=Strategy.DIVIDE, replicas=7, max_replicas_per_cluster=3)
    decision = run(policy, fleet)
    assert shares(decision) == {"a": 3, "b": 3}
    assert decision.unplaced_replicas == 1


def test_minimum_per_cluster_uses_fewer_clusters_rather_than_break_it() -> None:
    fleet = Fleet([cluster(c) for c in "abcd"])
    policy = PlacementPolicy(strategy=Strategy.DIVIDE, replicas=5, min_replicas_per_cluster=2)
    decision = run(policy, fleet)
    assert sum(shares(decision).values()) == 5  # type: ignore[arg-type]
    assert all(n is not None and n >= 2 for n in shares(decision).values())


# --- properties ----------------------------------------------------------------------------------------------

EFFECTS = list(TaintEffect)


@st.composite
def fleets(draw: st.DrawFn) -> Fleet:
    n = draw(st.integers(1, 12))
    views = []
    for i in range(n):
        taints = tuple(
            Taint(key=k, effect=e)
            for k, e in draw(st.lists(st.tuples(st.sampled_from(["t1", "t2"]), st.sampled_from(EFFECTS)), max_size=2))
        )
        views.append(
            ClusterView(
                cluster_id=f"c{i}",
                labels={"region": draw(st.sampled_from(["eu", "us", "ap"])), "tier": draw(st.sampled_from(["a", "b"]))},
                taints=tuple({(t.key, t.effect): t for t in taints}.values()),
                allocatable=Resources(cpu_millis=draw(st.integers(0, 8000))),
            )
        )
    fleet = Fleet(views)
    for view in views:
        fleet.set_load(view.cluster_id, draw(st.integers(0, 5)))
    return fleet


@st.composite
def policies(draw: st.DrawFn) -> PlacementPolicy:
    strategy = draw(st.sampled_from(list(Strategy)))
    replicas = draw(st.integers(1, 60))
    low = draw(st.integers(0, 3))
    high = draw(st.one_of(st.none(), st.integers(max(low, 1), 20)))
    return PlacementPolicy(
        selector=draw(st.sampled_from(["", "tier=a", "region in (eu,us)", "region!=ap"])),
        tolerations=[
            Toleration(key=k, operator=TolerationOperator.EXISTS) for k in draw(st.sets(st.sampled_from(["t1", "t2"])))
        ],
        strategy=strategy,
        replicas=replicas if strategy is Strategy.DIVIDE else 0,
        weighting=draw(st.sampled_from(list(Weighting))),
        static_weights=[StaticWeight(selector="region=eu", weight=draw(st.integers(0, 5)))]
        if draw(st.booleans())
        else [],
        min_replicas_per_cluster=min(low, replicas),
        max_replicas_per_cluster=high,
        max_clusters=draw(st.one_of(st.none(), st.integers(1, 6))),
        spread_topology_key=draw(st.sampled_from([None, "region"])),
    )


def untolerated_blocking(fleet: Fleet, policy: PlacementPolicy, cid: str) -> bool:
    tolerated = {t.key for t in policy.tolerations}
    return any(
        t.key not in tolerated and t.effect is not TaintEffect.PREFER_NO_SCHEDULE
        for t in fleet.clusters[cid].effective_taints()
    )


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 500),
    st.dictionaries(st.sampled_from("abcdefgh"), st.integers(0, 9), min_size=1),
    st.integers(0, 5),
    st.one_of(st.none(), st.integers(5, 200)),
)
def test_divide_sums_to_the_replica_count_within_bounds(
    replicas: int, weights: dict[str, int], low: int, high: int | None
) -> None:
    if low * len(weights) > replicas:
        return
    split = ideal_split(replicas, weights, low, high)
    assert sum(split.replicas.values()) + split.unplaced == replicas
    assert all(n >= low and (high is None or n <= high) for n in split.replicas.values())
    cap = None if high is None else high * len(weights)
    assert split.unplaced == (0 if cap is None else max(0, replicas - cap))
    current = {c: n + (i % 3) for i, (c, n) in enumerate(split.replicas.items())}
    steady = steady_split(replicas, weights, low, high, current)
    assert sum(steady.replicas.values()) + steady.unplaced == replicas
    assert all(n >= low and (high is None or n <= high) for n in steady.replicas.values())


@settings(max_examples=300, deadline=None)
@given(fleets(), policies())
def test_placement_invariants(fleet: Fleet, policy: PlacementPolicy) -> None:
    first = run(policy, fleet)
    for cid in first.placements:
        assert not untolerated_blocking(fleet, policy, cid), "placed on an untolerated taint"
    if policy.max_clusters is not None:
        assert len(first.placements) <= policy.max_clusters
    if policy.strategy is Strategy.DIVIDE:
        counts = [p.replicas or 0 for p in first.placements.values()]
        assert sum(counts) + first.unplaced_replicas == policy.replicas
        assert all(n >= max(policy.min_replicas_per_cluster, 1) for n in counts)
        high = policy.max_replicas_per_cluster
        assert all(high is None or n <= high for n in counts)
    # Placing again with nothing changed moves nothing.
    again = run(policy, fleet, first.placements)
    assert not again.changed
    assert again.moved_replicas == 0
    assert again.placements == first.placements


@settings(max_examples=300, deadline=None)
@given(fleets(), policies(), st.data())
def test_losing_a_cluster_moves_only_its_share(fleet: Fleet, policy: PlacementPolicy, data: st.DataObject) -> None:
    first = run(policy, fleet)
    if not first.placements:
        return
    lost = data.draw(st.sampled_from(sorted(first.placements)))
    view = fleet.clusters[lost]
    fleet.put(
        ClusterView(
            cluster_id=lost,
            labels=view.labels,
            taints=view.taints,
            allocatable=view.allocatable,
            health=ClusterHealth.UNREACHABLE,
            health_since=NOW,
        )
    )
    after = run(policy, fleet, first.placements, now=NOW + timedelta(seconds=1))
    assert lost not in after.placements
    assert after.removed == [lost]
    survivors = set(first.placements) - {lost}
    for cid in survivors:  # nobody else loses anything
        assert cid in after.placements
        assert (after.placements[cid].replicas or 0) >= (first.placements[cid].replicas or 0)
        assert after.placements[cid].since == first.placements[cid].since
    if policy.strategy is Strategy.DIVIDE:
        assert after.moved_replicas == first.placements[lost].replicas
        gained = sum((after.placements[c].replicas or 0) for c in after.placements) - sum(
            (first.placements[c].replicas or 0) for c in survivors
        )
        assert gained == (first.placements[lost].replicas or 0) - (after.unplaced_replicas - first.unplaced_replicas)
    else:
        assert len(after.added) <= 1 if policy.max_clusters is not None else True


@settings(max_examples=200, deadline=None)
@given(fleets(), st.lists(policies(), min_size=1, max_size=3), st.data())
def test_a_fleet_that_kept_its_selections_places_as_a_fresh_one_after_joins_relabels_and_leaves(
    fleet: Fleet, chosen: list[PlacementPolicy], data: st.DataObject
) -> None:
    """The fleet keeps each selector's matching set and its split by a spread label between decisions (a batch
    asks the same few again and again); after any join, relabel, leave or load change it decides as a fleet
    built afresh from the same clusters would, also when the kept selections outgrow their bound."""
    bound = data.draw(st.sampled_from([fleet_module.CACHED_IDS, 4]))
    with patch.object(fleet_module, "CACHED_IDS", bound):
        decide_after_changes(fleet, chosen, data)


def decide_after_changes(fleet: Fleet, chosen: list[PlacementPolicy], data: st.DataObject) -> None:
    for _ in range(4):
        for policy in chosen:  # fills the kept selections
            run(policy, fleet)
        change = data.draw(st.sampled_from(["join", "relabel", "leave", "load"]))
        cid = data.draw(st.sampled_from([*sorted(fleet.clusters), "new"]))
        region = data.draw(st.sampled_from(["eu", "us", "ap"]))
        if change == "leave":
            fleet.remove(cid)
        elif change == "load":
            fleet.set_load(cid, data.draw(st.integers(0, 5)))
        elif change == "join" or cid in fleet.clusters:
            old = fleet.clusters.get(cid)
            labels = {**(old.labels if old else {"tier": "a"}), "region": region}
            fleet.put(ClusterView(cluster_id=cid, labels=labels, taints=old.taints if old else ()))
        fresh = Fleet(fleet.clusters.values())
        for c in fleet.clusters:
            fresh.set_load(c, fleet.load.get(c, 0))
        for policy in chosen:
            assert run(policy, fleet) == run(policy, fresh)


def test_capacity_change_alone_moves_nothing_but_a_policy_change_rebalances() -> None:
    fleet = Fleet(
        [cluster("a", allocatable=Resources(cpu_millis=1000)), cluster("b", allocatable=Resources(cpu_millis=1000))]
    )
    policy = PlacementPolicy(strategy=Strategy.DIVIDE, replicas=10, weighting=Weighting.CAPACITY)
    first = run(policy, fleet)
    assert shares(first) == {"a": 5, "b": 5}
    fleet.put(cluster("a", allocatable=Resources(cpu_millis=9000)))
    assert not run(policy, fleet, first.placements).changed
    rebalanced = place(compile_policy(policy), fleet, first.placements, NOW, rebalance=True)
    assert shares(rebalanced) == {"a": 9, "b": 1}
    assert rebalanced.moved_replicas == 4


def test_uneven_shares_survive_a_loss_and_only_the_lost_share_moves() -> None:
    fleet = Fleet([cluster(c) for c in "abc"])
    policy = PlacementPolicy(strategy=Strategy.DIVIDE, replicas=12)
    current = {"a": Placement("a", 8, NOW), "b": Placement("b", 1, NOW), "c": Placement("c", 3, NOW)}
    fleet.remove("c")
    after = run(policy, fleet, current)
    assert shares(after) == {"a": 8, "b": 4}
    assert after.moved_replicas == 3
