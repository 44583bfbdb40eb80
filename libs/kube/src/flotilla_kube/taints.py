"""Taints in `kubectl taint` syntax (`key=value:Effect`, `key:Effect-`) and toleration matching."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from flotilla_contracts.v1.common import Taint, TaintEffect
from flotilla_kube.labels import check_key, check_value

_EFFECTS = {effect.value: effect for effect in TaintEffect}


def parse_taint(text: str) -> Taint:
    """`dedicated=gpu:NoSchedule` or `maintenance:NoExecute` -> Taint; ValueError naming what is wrong."""
    body, sep, effect = text.rpartition(":")
    if not sep:
        raise ValueError(f"taint {text!r} needs an effect: key[=value]:NoSchedule|PreferNoSchedule|NoExecute")
    if effect not in _EFFECTS:
        raise ValueError(f"taint {text!r}: effect must be one of {', '.join(_EFFECTS)}, not {effect!r}")
    key, _, value = body.partition("=")
    return Taint(key=check_key(key), value=check_value(value), effect=_EFFECTS[effect])


@dataclass(frozen=True)
class TaintRemoval:
    """Remove taints with this key, of this effect only when one is given."""

    key: str
    effect: TaintEffect | None = None

    def removes(self, taint: Taint) -> bool:
        return taint.key == self.key and (self.effect is None or taint.effect is self.effect)


@dataclass(frozen=True)
class TaintEdit:
    add: tuple[Taint, ...]
    remove: tuple[TaintRemoval, ...]

    def apply(self, taints: Sequence[Taint]) -> list[Taint]:
        """Removals first, then additions replace any taint with the same key and effect."""
        kept = [t for t in taints if not any(r.removes(t) for r in self.remove)]
        for new in self.add:
            kept = [t for t in kept if (t.key, t.effect) != (new.key, new.effect)]
            kept.append(new)
        return kept


def parse_taint_edits(args: Iterable[str]) -> TaintEdit:
    """`["dedicated=gpu:NoSchedule", "maintenance-", "old:NoExecute-"]` -> additions and removals."""
    add: list[Taint] = []
    remove: list[TaintRemoval] = []
    for arg in args:
        if arg.endswith("-"):
            spec = arg[:-1]
            key, sep, effect = spec.partition(":")
            if sep and effect not in _EFFECTS:
                raise ValueError(f"{arg!r}: effect must be one of {', '.join(_EFFECTS)}")
            remove.append(TaintRemoval(check_key(key), _EFFECTS[effect] if sep else None))
        else:
            add.append(parse_taint(arg))
    return TaintEdit(tuple(add), tuple(remove))


@dataclass(frozen=True)
class Toleration:
    """Kubernetes toleration semantics: Exists matches any value; an empty key with Exists matches all."""

    key: str = ""
    operator: str = "Equal"  # Equal | Exists
    value: str = ""
    effect: TaintEffect | None = None  # None: every effect
    toleration_seconds: float | None = None  # NoExecute only: how long the placement may stay

    def tolerates(self, taint: Taint) -> bool:
        if self.effect is not None and self.effect is not taint.effect:
            return False
        if self.operator == "Exists":
            return not self.key or self.key == taint.key
        return self.key == taint.key and self.value == taint.value


def untolerated(taints: Iterable[Taint], tolerations: Sequence[Toleration]) -> list[Taint]:
    """The taints no toleration covers (PreferNoSchedule included; the caller decides what it means)."""
    return [taint for taint in taints if not any(t.tolerates(taint) for t in tolerations)]
