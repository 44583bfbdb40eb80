"""Placement: which clusters take a subscription, and how many replicas each, moving as little as possible.

Pure: a compiled policy, the fleet, the current placement and `now` in; a `Decision` out. The rules:

- candidates are clusters whose labels match the selector;
- a taint nobody tolerates: `NoSchedule` keeps new placements off (what runs stays), `NoExecute` evicts,
  `PreferNoSchedule` only lowers the score. A tolerated `NoExecute` with `tolerationSeconds` lets a
  placement stay until the taint's time plus those seconds (then it is evicted; `next_check` says when),
  and takes no new placement. Unreachable or Lost clusters carry such taints (see `fleet.py`);
- steady: a cluster keeps its placement while it stays feasible; scores only fill free slots;
- `maxClusters` slots are filled best first by `ranking.rank_key`: fewer PreferNoSchedule taints, then
  spread over the topology label, then less loaded, then cluster id;
- `Divide` splits replicas by static weights or capacity within min/max; see `divide.py`.
"""

from __future__ import annotations

import functools
import heapq
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from flotilla_contracts.v1.common import Taint, TaintEffect
from flotilla_contracts.v1.scheduler import PlacementPolicy, Strategy, Weighting
from flotilla_kube.selectors import Selector, parse_selector
from flotilla_kube.taints import Toleration
from flotilla_scheduler.divide import fitting, ideal_split, steady_split
from flotilla_scheduler.fleet import ClusterView, Fleet
from flotilla_scheduler.ranking import RankKey, rank_key


@dataclass(frozen=True)
class Placement:
    """One cluster's share: replicas under Divide, None under Replicate; placed there since `since`."""

    cluster_id: str
    replicas: int | None
    since: datetime


@dataclass(frozen=True)
class CompiledPolicy:
    """A policy with its selectors parsed once (parse errors are caught by validation, before storing)."""

    policy: PlacementPolicy
    selector: Selector
    tolerations: tuple[Toleration, ...]
    weights: tuple[tuple[Selector, frozenset[str], int], ...]

    def weight_of(self, cluster: ClusterView) -> int:
        for selector, ids, weight in self.weights:
            if cluster.cluster_id in ids or (not ids and selector.matches(cluster.labels)):
                return weight
        return 1 if not self.weights else 0


# Subscriptions share selectors (the bench's 10,000 have ~60): each text is parsed once. A Selector is frozen.
_parse = functools.lru_cache(maxsize=4096)(parse_selector)


def compile_policy(policy: PlacementPolicy) -> CompiledPolicy:
    """Raises `SelectorError` for a bad selector (validation names the field first)."""
    tolerations = tuple(
        Toleration(
            key=t.key or "",
            operator=t.operator.value,
            value=t.value,
            effect=t.effect,
            toleration_seconds=t.toleration_seconds,
        )
        for t in policy.tolerations
    )
    weights = tuple((_parse(w.selector), frozenset(w.cluster_ids), w.weight) for w in policy.static_weights)
    return CompiledPolicy(policy, _parse(policy.selector), tolerations, weights)


@dataclass(frozen=True)
class Admission:
    """What a cluster's taints allow: new placements, staying, until when; and a score penalty."""

    new: bool = True
    stay: bool = True
    until: datetime | None = None
    penalty: int = 0


def admit(taints: Iterable[Taint], tolerations: tuple[Toleration, ...], now: datetime) -> Admission:
    """Kubernetes taint semantics applied to a cluster (see the module docstring)."""
    new, stay, until, penalty = True, True, None, 0
    for taint in taints:
        covering = [t for t in tolerations if t.tolerates(taint)]
        if not covering:
            if taint.effect is TaintEffect.NO_SCHEDULE:
                new = False
            elif taint.effect is TaintEffect.NO_EXECUTE:
                new = stay = False
            else:
                penalty += 1
            continue
        if taint.effect is not TaintEffect.NO_EXECUTE:
            continue
        if any(t.toleration_seconds is None for t in covering):
            continue
        seconds = max(t.toleration_seconds or 0.0 for t in covering)
        expires = (taint.added_at or now) + timedelta(seconds=seconds)
        new = False
        if expires <= now:
            stay = False
        else:
            until = expires if until is None else min(until, expires)
    return Admission(new, stay, until, penalty)


@dataclass(frozen=True)
class Decision:
    """The new placement and how it differs from the current one."""

    placements: dict[str, Placement]
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)
    moved_replicas: int = 0
    unplaced_replicas: int = 0
    next_check: datetime | None = None

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed or self.resized)


def ranked(fleet: Fleet, clusters: AbstractSet[str], penalty: dict[str, int], limit: int | None = None) -> list[str]:
    """Best first by `rank_key` (no spread term); without penalties the fleet's load index does it."""
    if not penalty:
        return fleet.least_loaded(clusters, len(clusters) if limit is None else limit)
    load, penalty_of = fleet.load.get, penalty.get

    def key(c: str) -> RankKey:
        return rank_key(c, load(c, 0), penalty=penalty_of(c, 0))

    if limit == 1:
        return [min(clusters, key=key)] if clusters else []
    best = sorted(clusters, key=key)
    return best if limit is None else best[:limit]


def pick(
    fleet: Fleet,
    candidates: AbstractSet[str],
    slots: int,
    key: str | None,
    taken: Iterable[str],
    penalty: dict[str, int],
    whole: Selector | None = None,
) -> list[str]:
    """The best `slots` candidates by `rank_key`, whose spread term counts the domain's clusters chosen so far.

    Greedy: each slot goes to the best-keyed candidate given the clusters `taken` and those picked before it.
    `whole`: the candidates are every cluster this selector matches, so the fleet's kept split of them serves.
    """
    if slots <= 0 or not candidates:
        return []
    if not key:
        return ranked(fleet, candidates, penalty, slots)
    counts: dict[str, int] = {}
    for c in taken:
        domain = fleet.clusters[c].labels.get(key, "")
        counts[domain] = counts.get(domain, 0) + 1
    # Within a domain the spread term is the same for all, so each domain's members are ranked by the label index
    # and the heap holds each domain's next member keyed with the domain's count. Lazily: a domain is ranked for its
    # best member first, and further only when a slot may go to its next one (in the heap meanwhile with a key no
    # greater than that member's: penalty 0, load -1). A fresh placement with a slot per domain ranks one each.
    split = fleet.split(whole, key) if whole is not None else fleet.domains(key, candidates)
    members_of = dict(split)
    groups: dict[str, list[str]] = {}
    heap: list[tuple[RankKey, str, int]] = []  # (key, domain, index in the domain); ids are unique: keys never tie
    for domain, members in split:
        first = groups.setdefault(domain, ranked(fleet, members, penalty, 1))[0]
        heap.append((fleet.rank_key(first, penalty=penalty.get(first, 0), spread=counts.get(domain, 0)), domain, 0))
    heapq.heapify(heap)
    chosen: list[str] = []
    while heap and len(chosen) < slots:
        (_, count, load, c), domain, index = heapq.heappop(heap)
        best = groups[domain]
        if load < 0:  # the domain's next member, not ranked yet
            if len(best) <= index:
                best = groups[domain] = ranked(fleet, members_of[domain], penalty, slots)
            if index < len(best):
                nxt = best[index]
                heapq.heappush(heap, (fleet.rank_key(nxt, penalty=penalty.get(nxt, 0), spread=count), domain, index))
            continue
        chosen.append(c)
        heapq.heappush(heap, ((0, count + 1, -1, ""), domain, index + 1))
    return chosen


def place(
    compiled: CompiledPolicy,
    fleet: Fleet,
    current: Mapping[str, Placement],
    now: datetime,
    *,
    rebalance: bool = False,
) -> Decision:
    """Decide the placement. `rebalance` re-splits Divide replicas from scratch (the policy changed)."""
    policy = compiled.policy
    matching = fleet.matching(compiled.selector)
    kept = set(matching.intersection(current)) if current else set()
    barred: set[str] = set()  # no new placement there
    penalty: dict[str, int] = {}
    next_check: datetime | None = None
    for c in matching & fleet.tainted:
        verdict = admit(fleet.clusters[c].effective_taints(), compiled.tolerations, now)
        if verdict.penalty:
            penalty[c] = verdict.penalty
        if c in kept:
            if not verdict.stay:
                kept.discard(c)
                barred.add(c)  # evicted: it takes no new placement either
            elif verdict.until is not None:
                next_check = verdict.until if next_check is None else min(next_check, verdict.until)
        elif not verdict.new:
            barred.add(c)
    whole = not kept and not barred  # the new candidates are the matching set itself (a fresh placement)
    new = matching if whole else matching - kept - barred
    chosen_kept: list[str] = sorted(kept)
    if policy.max_clusters is not None:
        limit = policy.max_clusters
        if len(chosen_kept) > limit:
            chosen_kept = pick(fleet, kept, limit, policy.spread_topology_key, (), penalty)
        slots, key = limit - len(chosen_kept), policy.spread_topology_key
        chosen_new = pick(fleet, new, slots, key, chosen_kept, penalty, compiled.selector if whole else None)
    elif policy.strategy is Strategy.DIVIDE:
        chosen_new = ranked(fleet, new, penalty)
    else:
        chosen_new = list(new)
    if policy.strategy is Strategy.REPLICATE:
        shares: dict[str, int | None] = dict.fromkeys(chosen_kept, None)
        shares.update(dict.fromkeys(chosen_new, None))
        unplaced = 0
    else:
        shares, unplaced = _divide(compiled, fleet, current, chosen_kept, chosen_new, rebalance)
    return _decision(current, shares, now, unplaced, next_check)


def _divide(
    compiled: CompiledPolicy,
    fleet: Fleet,
    current: Mapping[str, Placement],
    kept: list[str],
    new: list[str],
    rebalance: bool,
) -> tuple[dict[str, int | None], int]:
    policy = compiled.policy
    low, high = policy.min_replicas_per_cluster, policy.max_replicas_per_cluster
    kept.sort(key=lambda c: (-(current[c].replicas or 0), c))
    chosen = fitting([*kept, *new], policy.replicas, low)
    if policy.weighting is Weighting.CAPACITY:
        weights = {c: fleet.clusters[c].capacity(policy.capacity_resource) for c in chosen}
    else:
        weights = {c: compiled.weight_of(fleet.clusters[c]) for c in chosen}
    if rebalance or not current:
        split = ideal_split(policy.replicas, weights, low, high)
    else:
        have = {c: p.replicas or 0 for c, p in current.items()}
        split = steady_split(policy.replicas, weights, low, high, have)
    shares: dict[str, int | None] = {c: n for c, n in split.replicas.items() if n > 0}
    return shares, split.unplaced


def _decision(
    current: Mapping[str, Placement],
    shares: Mapping[str, int | None],
    now: datetime,
    unplaced: int,
    next_check: datetime | None,
) -> Decision:
    placements: dict[str, Placement] = {}
    added: list[str] = []
    resized: list[str] = []
    moved = 0
    for c in sorted(shares):
        replicas = shares[c]
        before = current.get(c)
        if before is None:
            added.append(c)
            placements[c] = Placement(c, replicas, now)
        else:
            placements[c] = before if before.replicas == replicas else Placement(c, replicas, before.since)
            if before.replicas != replicas:
                resized.append(c)
                moved += max(0, (before.replicas or 0) - (replicas or 0))
    removed = sorted(c for c in current if c not in shares)
    moved += sum(current[c].replicas or 0 for c in removed)
    return Decision(placements, added, removed, resized, moved, unplaced, next_check)
