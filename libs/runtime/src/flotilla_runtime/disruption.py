"""Fleet disruption: when much of the fleet goes Unreachable at once, the likeliest cause is on our side.

Kubernetes' node lifecycle controller stops evicting when a whole zone goes NotReady (full disruption): a
partition, the bus restarting or the heartbeat service behind looks, from the hub, like every cluster dying at
once, and moving every workload (or freezing nothing) would turn our outage into the fleet's. The scheduler
and the orchestrator apply this one rule, each to its own read model of cluster health (no new coupling, and
both hold a verdict even when the heartbeat service stops speaking):

- a group is the whole fleet, and, when `Policy.group_label` is set, the clusters sharing a value of that label;
- a group becomes disrupted when at least `share` of its member clusters (and at least `min_clusters`) went
  Unreachable within `window_s` of the health change being judged: a burst, not a slow trickle of real losses;
- it recovers when the share still Unreachable falls below `recover_share` (lower than `share`: hysteresis, so
  a fleet hovering at the threshold does not flap).

Pure and clocked by the health events' own times (never a wall clock), so every consumer reaches the same
verdict at the same event, on replay too; the caller keeps `Watch.disrupted` to survive a restart.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import msgspec

from flotilla_runtime.errors import SettingsError
from flotilla_runtime.settings import ServiceSettings

FLEET = ""  # the group label of the whole fleet


@dataclass(frozen=True, slots=True)
class Policy:
    """When a group counts as disrupted (see the module docstring); `enabled` False judges nothing."""

    share: float = 0.55
    recover_share: float = 0.35
    window_s: float = 120.0
    min_clusters: int = 3
    group_label: str = ""
    enabled: bool = True

    def problem(self) -> str | None:
        """What is wrong with these values, in words (None: they make sense)."""
        if not 0.0 < self.share <= 1.0:
            return f"share must be above 0 and at most 1, not {self.share}"
        if not 0.0 < self.recover_share <= self.share:
            return f"recover_share must be above 0 and at most share ({self.share}), not {self.recover_share}"
        if self.window_s <= 0:
            return f"window_s must be above 0, not {self.window_s}"
        if self.min_clusters < 1:
            return f"min_clusters must be at least 1, not {self.min_clusters}"
        return None


class Disruption(msgspec.Struct, frozen=True, kw_only=True):
    """One disrupted group: `label` "" is the whole fleet, else the label key and its `value`."""

    label: str = FLEET
    value: str = ""
    unreachable: int
    total: int
    since: datetime

    @property
    def key(self) -> tuple[str, str]:
        return (self.label, self.value)

    def describe(self) -> str:
        where = "clusters" if self.label == FLEET else f"clusters with {self.label}={self.value}"
        return f"{self.unreachable} of {self.total} {where} Unreachable"


@dataclass(frozen=True, slots=True)
class Change:
    """What one judgement changed: groups that became disrupted, groups that recovered (as they were)."""

    began: tuple[Disruption, ...] = ()
    ended: tuple[Disruption, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.began or self.ended)


@dataclass(slots=True)
class _Group:
    members: set[str] = field(default_factory=set)
    unreachable: dict[str, datetime] = field(default_factory=dict)  # cluster -> Unreachable since


class Watch:
    """The clusters' health as the rule needs it, counted per group, and the groups disrupted now.

    `put` a member cluster (or `drop` one that left) as its health or labels change, then `judge` at the time of
    that change. Only the groups touched since the last judgement are looked at.
    """

    def __init__(self, policy: Policy, disrupted: Iterable[Disruption] = ()) -> None:
        self.policy = policy
        self.disrupted: dict[tuple[str, str], Disruption] = {d.key: d for d in disrupted}
        self._groups: dict[tuple[str, str], _Group] = {}
        self._of: dict[str, tuple[tuple[str, str], ...]] = {}
        self._touched: set[tuple[str, str]] = set()

    def _keys(self, labels: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
        label = self.policy.group_label
        if label and label in labels:
            return ((FLEET, ""), (label, labels[label]))
        return ((FLEET, ""),)

    def put(self, cluster_id: str, labels: Mapping[str, str], unreachable_since: datetime | None) -> None:
        """A member cluster: its labels and, when Unreachable, since when (None: it is not Unreachable)."""
        self.drop(cluster_id)
        keys = self._keys(labels)
        self._of[cluster_id] = keys
        for key in keys:
            group = self._groups.setdefault(key, _Group())
            group.members.add(cluster_id)
            if unreachable_since is not None:
                group.unreachable[cluster_id] = unreachable_since
            self._touched.add(key)

    def drop(self, cluster_id: str) -> None:
        """The cluster is no member (any more)."""
        for key in self._of.pop(cluster_id, ()):
            group = self._groups[key]
            group.members.discard(cluster_id)
            group.unreachable.pop(cluster_id, None)
            self._touched.add(key)

    def holds(self, labels: Mapping[str, str]) -> bool:
        """Whether a cluster with these labels is in a disrupted group."""
        return bool(self.disrupted) and any(key in self.disrupted for key in self._keys(labels))

    def settle(self) -> None:
        """Keep the verdict as it is (restored with the members after a restart) until the next change."""
        self._touched.clear()

    def judge(self, now: datetime) -> Change:
        """The rule over the groups touched since the last judgement, at `now` (the judged change's time)."""
        touched, self._touched = self._touched, set()
        if not self.policy.enabled:
            return Change()
        began: list[Disruption] = []
        ended: list[Disruption] = []
        for key in sorted(touched):
            group = self._groups.get(key, _Group())
            total, down = len(group.members), len(group.unreachable)
            current = self.disrupted.get(key)
            if current is not None:
                if total == 0 or down < self.policy.recover_share * total:
                    ended.append(current)
                    del self.disrupted[key]
                continue
            if total == 0 or down < max(self.policy.min_clusters, self.policy.share * total):
                continue  # cheap: too few Unreachable at all, whatever their times
            start = now - timedelta(seconds=self.policy.window_s)
            recent = sum(1 for since in group.unreachable.values() if since >= start)
            if recent >= max(self.policy.min_clusters, self.policy.share * total):
                found = Disruption(label=key[0], value=key[1], unreachable=down, total=total, since=now)
                self.disrupted[key] = found
                began.append(found)
        return Change(tuple(began), tuple(ended))


def describe(disrupted: Iterable[Disruption]) -> str:
    """The disrupted groups in words, for events and freezes."""
    return "; ".join(d.describe() for d in disrupted)


class DisruptionSettings(ServiceSettings, kw_only=True, frozen=True):
    """`FLOTILLA_<SERVICE>_DISRUPTION_*`: the rule's values, the same in every service that applies it."""

    disruption_enabled: bool = True
    disruption_share: float = 0.55  # of a group's clusters Unreachable within the window: disrupted
    disruption_recover_share: float = 0.35  # Unreachable share below which a disrupted group recovers
    disruption_window_s: float = 120.0
    disruption_min_clusters: int = 3  # never disrupted with fewer Unreachable clusters than this
    disruption_group_label: str = ""  # also judge each value of this cluster label as its own group

    def disruption_policy(self, prefix: str) -> Policy:
        """The policy; raises `SettingsError` naming the variable `prefix`DISRUPTION_... when it makes no sense."""
        policy = Policy(
            share=self.disruption_share,
            recover_share=self.disruption_recover_share,
            window_s=self.disruption_window_s,
            min_clusters=self.disruption_min_clusters,
            group_label=self.disruption_group_label,
            enabled=self.disruption_enabled,
        )
        problem = policy.problem()
        if problem is not None:
            raise SettingsError(f"{prefix}DISRUPTION_{problem.split()[0].upper()}: {problem}")
        return policy
