"""Builds valid sample bodies for any contract message from its type, and finds its id (token) fields.

`minimal` fills only required fields (everything else keeps its default); `full` fills every field.
A string pattern with no sample here fails loudly: add one when you add a new constrained string type.
"""

from __future__ import annotations

from typing import Any

import msgspec
import msgspec.inspect as mi

from flotilla_contracts.ids import K8S_NAME_PATTERN, TOKEN_PATTERN
from flotilla_contracts.v1 import common

SAMPLE_BY_PATTERN: dict[str, str] = {
    TOKEN_PATTERN: "id-1",
    K8S_NAME_PATTERN: "node-1.example",
    common.KUBE_VERSION_PATTERN: "v1.30.4",
    common.LABEL_KEY_PATTERN: "topology.kubernetes.io/region",
    common.LABEL_VALUE_PATTERN: "eu-west-1",
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$": "edge-1",
    r"^[A-Za-z0-9-]+$": "0b6c7f3e-2d1a-4e5b-9c8d-7a6b5c4d3e2f",
    r"^([01][0-9]|2[0-3]):[0-5][0-9]$": "02:30",
    r"^[A-Za-z0-9+/]*={0,2}$": "eyJvayI6dHJ1ZX0=",
    r"^[^\n\r]*$": "ops@example",
}
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
TIMESTAMP = "2025-01-02T03:04:05Z"


def _sample_str(t: mi.StrType) -> str:
    if t.pattern is None:
        value = "x"
    elif t.pattern.startswith("^(ssh-"):
        value = HOST_KEY
    elif t.pattern in SAMPLE_BY_PATTERN:
        value = SAMPLE_BY_PATTERN[t.pattern]
    else:
        raise LookupError(f"no sample for string pattern {t.pattern!r}: add one to tests/contract/samples.py")
    if t.min_length is not None and len(value) < t.min_length:
        value = value * t.min_length
    return value


def _sample_number(t: mi.IntType | mi.FloatType) -> int | float:
    low: float = 1
    if t.ge is not None:
        low = max(low, t.ge)
    if t.gt is not None:
        low = max(low, t.gt + 1)
    if t.le is not None:
        low = min(low, t.le)
    return int(low) if isinstance(t, mi.IntType) else float(low)


def sample(t: mi.Type, *, full: bool) -> Any:
    """A JSON-ready value of type `t`."""
    if isinstance(t, mi.Metadata):
        return sample(t.type, full=full)
    if isinstance(t, mi.StructType):
        out: dict[str, Any] = {}
        for field in t.fields:
            if field.required or full:
                out[field.encode_name] = sample(field.type, full=full)
        return out
    if isinstance(t, mi.UnionType):
        choices = [x for x in t.types if not isinstance(x, mi.NoneType)]
        return sample(choices[0], full=full) if choices else None
    if isinstance(t, mi.StrType):
        return _sample_str(t)
    if isinstance(t, mi.IntType | mi.FloatType):
        return _sample_number(t)
    if isinstance(t, mi.BoolType):
        return True
    if isinstance(t, mi.DateTimeType):
        return TIMESTAMP
    if isinstance(t, mi.EnumType):
        return list(t.cls)[-1].value
    if isinstance(t, mi.ListType):
        return [sample(t.item_type, full=full)] if full or (t.min_length or 0) > 0 else []
    if isinstance(t, mi.DictType):
        if not full:
            return {}
        return {sample(t.key_type, full=full): sample(t.value_type, full=full)}
    if isinstance(t, mi.AnyType):
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}}
    if isinstance(t, mi.NoneType):
        return None
    raise TypeError(f"no sample for {t!r}")


def sample_body(message: type[msgspec.Struct], *, full: bool) -> dict[str, Any]:
    """A sample body (JSON-ready dict) for a message type."""
    value = sample(mi.type_info(message), full=full)
    assert isinstance(value, dict)
    return value


def _is_token(t: mi.Type) -> bool:
    return isinstance(t, mi.StrType) and t.pattern == TOKEN_PATTERN


def token_paths(t: mi.Type, value: Any, path: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    """Paths, in a full sample `value`, of every string that must be a token (also inside lists, maps)."""
    if isinstance(t, mi.Metadata):
        return token_paths(t.type, value, path)
    if _is_token(t):
        return [path]
    if isinstance(t, mi.UnionType):
        return [p for x in t.types if not isinstance(x, mi.NoneType) for p in token_paths(x, value, path)]
    if isinstance(t, mi.StructType) and isinstance(value, dict):
        return [
            p
            for f in t.fields
            if f.encode_name in value
            for p in token_paths(f.type, value[f.encode_name], (*path, f.encode_name))
        ]
    if isinstance(t, mi.ListType) and isinstance(value, list) and value:
        return token_paths(t.item_type, value[0], (*path, 0))
    if isinstance(t, mi.DictType) and isinstance(value, dict) and value:
        key = next(iter(value))
        return token_paths(t.value_type, value[key], (*path, key))
    return []


def replaced(body: Any, path: tuple[str | int, ...], new: Any) -> Any:
    """A deep copy of `body` with the value at `path` replaced."""
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(body, list):
        copy = list(body)
        copy[int(head)] = replaced(body[int(head)], rest, new)
        return copy
    return {**body, head: replaced(body[head], rest, new)}
