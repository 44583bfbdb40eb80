"""Kubernetes label key and value rules, and the `k=v` / `k-` edit syntax of `kubectl label`."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from flotilla_contracts.v1.common import LABEL_KEY_PATTERN, LABEL_VALUE_PATTERN

_KEY_RE = re.compile(LABEL_KEY_PATTERN)
_VALUE_RE = re.compile(LABEL_VALUE_PATTERN)
MAX_PREFIX = 253
MAX_NAME = 63


def check_key(key: str) -> str:
    """Return the key when valid; raise ValueError saying which Kubernetes rule it breaks."""
    prefix, _, name = key.rpartition("/")
    if "/" in key and not prefix:
        raise ValueError(f"label key {key!r} has an empty prefix before '/'")
    if len(prefix) > MAX_PREFIX:
        raise ValueError(f"label key prefix of {key!r} is longer than {MAX_PREFIX} characters")
    if not name or len(name) > MAX_NAME:
        raise ValueError(f"label key {key!r}: the name part must be 1-{MAX_NAME} characters")
    if not _KEY_RE.match(key):
        raise ValueError(
            f"label key {key!r} is invalid: an optional DNS prefix and '/', then alphanumerics, '-', '_' or '.', "
            "starting and ending with an alphanumeric"
        )
    return key


def check_value(value: str) -> str:
    """Return the value when valid (empty is valid); raise ValueError otherwise."""
    if len(value) > MAX_NAME or not _VALUE_RE.match(value):
        raise ValueError(
            f"label value {value!r} is invalid: at most {MAX_NAME} alphanumerics, '-', '_' or '.', "
            "starting and ending with an alphanumeric"
        )
    return value


@dataclass(frozen=True)
class LabelEdit:
    """`set` adds or overwrites, `remove` deletes keys (absent keys are fine)."""

    set: Mapping[str, str]
    remove: frozenset[str]

    def apply(self, labels: Mapping[str, str]) -> dict[str, str]:
        result = {key: value for key, value in labels.items() if key not in self.remove}
        result.update(self.set)
        return result


def parse_label_edits(args: Iterable[str]) -> LabelEdit:
    """`["env=prod", "tier-"]` -> set env=prod, remove tier; a key both set and removed is an error."""
    to_set: dict[str, str] = {}
    to_remove: set[str] = set()
    for arg in args:
        if "=" in arg:
            key, _, value = arg.partition("=")
            to_set[check_key(key)] = check_value(value)
        elif arg.endswith("-"):
            to_remove.add(check_key(arg[:-1]))
        else:
            raise ValueError(f"{arg!r}: use key=value to set a label or key- to remove it")
    both = to_remove & to_set.keys()
    if both:
        raise ValueError(f"label {sorted(both)[0]!r} is both set and removed")
    return LabelEdit(set=to_set, remove=frozenset(to_remove))


def parse_labels(args: Iterable[str]) -> dict[str, str]:
    """`["env=prod", "region=eu"]` -> a validated dict (removals are not allowed here)."""
    edit = parse_label_edits(args)
    if edit.remove:
        raise ValueError(f"cannot remove {sorted(edit.remove)[0]!r} here; give key=value pairs")
    return dict(edit.set)
