"""The clusters placement sees: labels, taints (health turned into taints) and capacity, indexed by label.

Plain values only. The read model (`readmodel.py`) builds these from registration and heartbeat events;
placement (`placement.py`) asks the index which clusters a selector can match, so a decision costs the
size of its candidate set, not the size of the fleet.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime

from flotilla_contracts.v1.common import Resources, Taint, TaintEffect
from flotilla_contracts.v1.heartbeat import ClusterHealth
from flotilla_contracts.v1.scheduler import CapacityResource
from flotilla_kube.selectors import Op, Selector
from flotilla_scheduler.ranking import RankKey, rank_key

# Health as taints: the scheduler treats a cluster nobody hears (or whose nodes are all Lost) as tainted,
# so a subscription may tolerate it for a while (`tolerationSeconds`) before its share moves.
UNREACHABLE_TAINT = "flotilla.dev/unreachable"
LOST_TAINT = "flotilla.dev/lost"

# `least_loaded` walks the load buckets in ascending order (one set intersection per distinct load) instead of
# sorting the whole candidate set. The walk pays off over few distinct loads, for a large set or for its best few:
SORT_AT_MOST = 32  # candidates up to this many: one sort of the set costs less than intersecting every bucket...
WALK_FOR_AT_MOST = 8  # ...unless only this many are asked: they are in the first buckets (best of 33: 2.6 vs 11.6 us)
WALK_AT_MOST_LOADS = 64  # more distinct loads than this: the intersections cost more than one sort of the set
# Placing many subscriptions at once (a batch apply) asks the same few selectors and spread keys again and again
# while no cluster joins, leaves or changes labels: a selector's matching set and its split by a spread label are
# kept until one does (load changes do not touch them; they were ~55% of a fresh decision's cost). Bounded: the
# kept selections are dropped when they would hold more than this many cluster ids (a set slot each, ~50 MiB).
CACHED_IDS = 1_000_000


@dataclass(frozen=True)
class ClusterView:
    """One Approved cluster as placement sees it; `lost` means every node of it is Lost."""

    cluster_id: str
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Taint, ...] = ()
    health: ClusterHealth = ClusterHealth.UNKNOWN
    health_since: datetime | None = None
    lost: bool = False
    allocatable: Resources | None = None
    held: bool = False  # in a disrupted group (flotilla_runtime.disruption): its health taints only NoSchedule

    def effective_taints(self) -> tuple[Taint, ...]:
        """Its own taints plus those its health implies, stamped with when that health began. While the fleet is
        disrupted (`held`) they keep new placements off but evict nothing: the likeliest cause is on our side."""
        extra: list[Taint] = []
        if self.health is ClusterHealth.UNREACHABLE:
            effect = TaintEffect.NO_SCHEDULE if self.held else TaintEffect.NO_EXECUTE
            extra.append(Taint(key=UNREACHABLE_TAINT, effect=effect, added_at=self.health_since))
            if self.lost:
                extra.append(Taint(key=LOST_TAINT, effect=effect, added_at=self.health_since))
        return (*self.taints, *extra) if extra else self.taints

    def capacity(self, resource: CapacityResource) -> int:
        if self.allocatable is None:
            return 0
        match resource:
            case CapacityResource.CPU:
                return self.allocatable.cpu_millis
            case CapacityResource.MEMORY:
                return self.allocatable.memory_bytes
            case CapacityResource.PODS:
                return self.allocatable.pods


class Fleet:
    """Clusters by id with an inverted label index; `load` counts placements per cluster (for scoring)."""

    def __init__(self, clusters: Iterable[ClusterView] = ()) -> None:
        self.clusters: dict[str, ClusterView] = {}
        self._by_label: dict[tuple[str, str], set[str]] = {}
        self._by_key: dict[str, set[str]] = {}
        self._values: dict[str, set[str]] = {}
        self.tainted: set[str] = set()
        self.load: dict[str, int] = {}  # read it; change it with set_load (the buckets follow)
        self._by_load: dict[int, set[str]] = {}
        self._loads: list[int] = []  # the bucket keys, ascending
        self._matching: dict[Selector, frozenset[str]] = {}
        self._split: dict[tuple[Selector, str], list[tuple[str, frozenset[str]]]] = {}
        self._kept_ids = 0  # cluster ids held by the kept selections
        for cluster in clusters:
            self.put(cluster)

    def __len__(self) -> int:
        return len(self.clusters)

    def get(self, cluster_id: str) -> ClusterView | None:
        return self.clusters.get(cluster_id)

    def put(self, cluster: ClusterView) -> ClusterView | None:
        """Add or replace a cluster; returns the previous view."""
        previous = self._drop(cluster.cluster_id)
        if previous is None or previous.labels != cluster.labels:
            self._forget_selections()
        self.clusters[cluster.cluster_id] = cluster
        for key, value in cluster.labels.items():
            self._by_label.setdefault((key, value), set()).add(cluster.cluster_id)
            self._by_key.setdefault(key, set()).add(cluster.cluster_id)
            self._values.setdefault(key, set()).add(value)
        if cluster.effective_taints():
            self.tainted.add(cluster.cluster_id)
        self._bucket(cluster.cluster_id, self.load.get(cluster.cluster_id, 0))
        return previous

    def remove(self, cluster_id: str) -> ClusterView | None:
        previous = self._drop(cluster_id)
        if previous is not None:
            self._forget_selections()
        return previous

    def _forget_selections(self) -> None:
        self._matching.clear()
        self._split.clear()
        self._kept_ids = 0

    def _keep(self, ids: int) -> None:
        """Room for `ids` more kept cluster ids: all kept selections are dropped when they would exceed the bound."""
        if self._kept_ids + ids > CACHED_IDS:
            self._forget_selections()
        self._kept_ids += ids

    def _drop(self, cluster_id: str) -> ClusterView | None:
        previous = self.clusters.pop(cluster_id, None)
        if previous is None:
            return None
        for key, value in previous.labels.items():
            self._by_label.get((key, value), set()).discard(cluster_id)
            self._by_key.get(key, set()).discard(cluster_id)
        self.tainted.discard(cluster_id)
        self._unbucket(cluster_id)
        return previous

    def set_load(self, cluster_id: str, load: int) -> None:
        """How many placements the cluster carries (for "prefer less loaded")."""
        if cluster_id in self.clusters:
            self._unbucket(cluster_id)
            self._bucket(cluster_id, load)
        self.load[cluster_id] = load

    def _bucket(self, cluster_id: str, load: int) -> None:
        bucket = self._by_load.get(load)
        if bucket is None:
            bucket = self._by_load[load] = set()
            self._loads = sorted(self._by_load)
        bucket.add(cluster_id)

    def _unbucket(self, cluster_id: str) -> None:
        load = self.load.get(cluster_id, 0)
        bucket = self._by_load.get(load)
        if bucket is not None:
            bucket.discard(cluster_id)
            if not bucket:
                del self._by_load[load]
                self._loads = sorted(self._by_load)

    def rank_key(self, cluster_id: str, *, penalty: int = 0, spread: int = 0) -> RankKey:
        """`ranking.rank_key` with this fleet's load for the cluster."""
        return rank_key(cluster_id, self.load.get(cluster_id, 0), penalty=penalty, spread=spread)

    def least_loaded(self, among: AbstractSet[str], limit: int) -> list[str]:
        """The best `limit` of `among` by `rank_key` with no penalty and no spread: less loaded first, then by id."""
        if len(self._loads) > WALK_AT_MOST_LOADS or (len(among) <= SORT_AT_MOST and limit > WALK_FOR_AT_MOST):
            load_of = self.load.get
            return sorted(among, key=lambda c: rank_key(c, load_of(c, 0)))[:limit]
        out: list[str] = []
        for load in self._loads:  # ascending: the key's load term; within one bucket only the id is left to order
            inside = among & self._by_load[load]
            if inside:
                out += [min(inside)] if limit - len(out) == 1 else sorted(inside)[: limit - len(out)]
                if len(out) >= limit:
                    break
        return out

    def domains(self, key: str, among: AbstractSet[str]) -> list[tuple[str, frozenset[str]]]:
        """`among` split by the value of label `key` ("" for clusters without it), by set algebra."""
        found: list[tuple[str, frozenset[str]]] = []
        for value in self._values.get(key, ()):
            if inside := among & self._by_label.get((key, value), set()):
                found.append((value, frozenset(inside)))
        if rest := among - self._by_key.get(key, set()):
            found.append(("", frozenset(rest)))
        return found

    def split(self, selector: Selector, key: str) -> list[tuple[str, frozenset[str]]]:
        """`domains(key, matching(selector))`, kept until a cluster joins, leaves or changes labels."""
        found = self._split.get((selector, key))
        if found is None:
            found = self.domains(key, self.matching(selector))
            self._keep(sum(len(members) for _, members in found))
            self._split[selector, key] = found
        return found

    def matching(self, selector: Selector) -> frozenset[str]:
        """Ids of the clusters whose labels match, kept until a cluster joins, leaves or changes labels."""
        found = self._matching.get(selector)
        if found is None:
            found = frozenset(self._select(selector))
            self._keep(len(found))
            self._matching[selector] = found
        return found

    def _select(self, selector: Selector) -> set[str]:
        """Set algebra for positive requirements, a filter for the rest."""
        candidates: set[str] | None = None
        rest = []
        for requirement in selector.requirements:
            found: set[str] | None = None
            if requirement.op in (Op.EQUALS, Op.IN):
                found = set()
                for value in requirement.values:
                    found |= self._by_label.get((requirement.key, value), set())
            elif requirement.op is Op.EXISTS:
                found = self._by_key.get(requirement.key, set())
            else:
                rest.append(requirement)
                continue
            candidates = set(found) if candidates is None else candidates & found
            if not candidates:
                return set()
        if candidates is None:
            candidates = set(self.clusters)
        if rest:
            candidates = {c for c in candidates if all(r.matches(self.clusters[c].labels) for r in rest)}
        return candidates
