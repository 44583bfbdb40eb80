"""Rendering a subscription's manifests for one cluster: its replica share, then overrides in two stages.

As Clusternet's Globalization then Localization: `global` overrides (by cluster selector) first, then
`local` ones (by cluster id), each stage in ascending priority (then name). Patches are RFC 6902 JSON
Patch or RFC 7386 JSON Merge Patch, implemented here over plain JSON values. Pure.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from flotilla_contracts.v1.scheduler import (
    JsonPatchOp,
    JsonPatchOpKind,
    ManifestSelector,
    Override,
    OverrideStage,
    PatchType,
)
from flotilla_kube.selectors import Selector, parse_selector

# Kinds whose `spec.replicas` carries a Divide share.
SCALABLE_KINDS = frozenset({"Deployment", "StatefulSet", "ReplicaSet"})


class PatchError(ValueError):
    """A patch that cannot apply to a manifest; the message names the operation and the path."""


@dataclass(frozen=True)
class CompiledOverride:
    override: Override
    selector: Selector

    def applies_to(self, cluster_id: str, labels: Mapping[str, str]) -> bool:
        ids = self.override.cluster_ids
        if ids and cluster_id not in ids:
            return False
        return self.selector.matches(labels) if (self.override.selector or not ids) else True


def compile_overrides(overrides: Sequence[Override]) -> tuple[CompiledOverride, ...]:
    """In application order: global before local, ascending priority, then name."""
    stage_order = {OverrideStage.GLOBAL: 0, OverrideStage.LOCAL: 1}
    ordered = sorted(overrides, key=lambda o: (stage_order[o.stage], o.priority, o.name))
    return tuple(CompiledOverride(o, parse_selector(o.selector)) for o in ordered)


def _targets(target: ManifestSelector, manifest: Mapping[str, Any]) -> bool:
    meta = manifest.get("metadata") or {}
    return (
        (not target.api_version or manifest.get("apiVersion") == target.api_version)
        and (not target.kind or manifest.get("kind") == target.kind)
        and (not target.namespace or meta.get("namespace", "") == target.namespace)
        and (not target.name or meta.get("name") == target.name)
    )


@dataclass(frozen=True)
class Rendered:
    manifests: list[dict[str, Any]]
    overrides_applied: list[str]


def render(
    manifests: Sequence[Mapping[str, Any]],
    overrides: Sequence[CompiledOverride],
    cluster_id: str,
    labels: Mapping[str, str],
    replicas: int | None,
) -> Rendered:
    """The manifests for one cluster; raises PatchError naming the override that does not apply."""
    out: list[dict[str, Any]] = _copy(list(manifests))
    if replicas is not None:
        for manifest in out:
            if manifest.get("kind") in SCALABLE_KINDS:
                spec = manifest.setdefault("spec", {})
                if isinstance(spec, dict):
                    spec["replicas"] = replicas
    applied: list[str] = []
    for compiled in overrides:
        override = compiled.override
        if not compiled.applies_to(cluster_id, labels):
            continue
        touched = False
        for i, manifest in enumerate(out):
            if not _targets(override.target, manifest):
                continue
            try:
                if override.type is PatchType.JSON_PATCH:
                    out[i] = apply_json_patch(manifest, override.json_patch)
                else:
                    out[i] = merge_patch(manifest, override.merge_patch)
            except PatchError as exc:
                raise PatchError(f"override {override.name}: {exc}") from None
            touched = True
        if touched:
            applied.append(override.name)
    return Rendered(out, applied)


# A deep copy of JSON values (manifests are): one encode and decode, several times cheaper than copy.deepcopy.
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(list[dict[str, Any]])


def _copy(manifests: list[Any]) -> list[dict[str, Any]]:
    return _decoder.decode(_encoder.encode(manifests))


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, null removes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def parse_pointer(pointer: str) -> list[str]:
    """RFC 6901 pointer to its reference tokens; PatchError when it does not start with '/'."""
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise PatchError(f"path {pointer!r} is not a JSON pointer (it must start with '/')")
    return [part.replace("~1", "/").replace("~0", "~") for part in pointer[1:].split("/")]


def _index(container: list[Any], token: str, pointer: str, *, adding: bool = False) -> int:
    if adding and token == "-":
        return len(container)
    if not token.isdigit() or (len(token) > 1 and token.startswith("0")):
        raise PatchError(f"{pointer}: {token!r} is not an array index")
    index = int(token)
    if index > len(container) or (index == len(container) and not adding):
        raise PatchError(f"{pointer}: index {index} is out of range")
    return index


def _parent(doc: Any, tokens: list[str], pointer: str) -> Any:
    node = doc
    for token in tokens[:-1]:
        if isinstance(node, dict):
            if token not in node:
                raise PatchError(f"{pointer}: {token!r} does not exist")
            node = node[token]
        elif isinstance(node, list):
            node = node[_index(node, token, pointer)]
        else:
            raise PatchError(f"{pointer}: cannot descend into a {type(node).__name__}")
    return node


def _get(doc: Any, pointer: str) -> Any:
    tokens = parse_pointer(pointer)
    if not tokens:
        return doc
    parent = _parent(doc, tokens, pointer)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"{pointer} does not exist")
        return parent[last]
    if isinstance(parent, list):
        return parent[_index(parent, last, pointer)]
    raise PatchError(f"{pointer}: cannot read a {type(parent).__name__}")


def _add(doc: Any, pointer: str, value: Any) -> Any:
    tokens = parse_pointer(pointer)
    if not tokens:
        return value
    parent = _parent(doc, tokens, pointer)
    if isinstance(parent, dict):
        parent[tokens[-1]] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, tokens[-1], pointer, adding=True), value)
    else:
        raise PatchError(f"{pointer}: cannot add into a {type(parent).__name__}")
    return doc


def _remove(doc: Any, pointer: str) -> tuple[Any, Any]:
    tokens = parse_pointer(pointer)
    if not tokens:
        raise PatchError("cannot remove the whole document")
    parent = _parent(doc, tokens, pointer)
    if isinstance(parent, dict):
        if tokens[-1] not in parent:
            raise PatchError(f"{pointer} does not exist")
        return doc, parent.pop(tokens[-1])
    if isinstance(parent, list):
        return doc, parent.pop(_index(parent, tokens[-1], pointer))
    raise PatchError(f"{pointer}: cannot remove from a {type(parent).__name__}")


def apply_json_patch(document: Any, ops: Sequence[JsonPatchOp]) -> Any:
    """RFC 6902, all or nothing: the input is not changed."""
    doc = copy.deepcopy(document)
    for op in ops:
        match op.op:
            case JsonPatchOpKind.ADD:
                doc = _add(doc, op.path, copy.deepcopy(op.value))
            case JsonPatchOpKind.REMOVE:
                doc, _ = _remove(doc, op.path)
            case JsonPatchOpKind.REPLACE:
                _get(doc, op.path)
                doc, _ = _remove(doc, op.path) if parse_pointer(op.path) else (doc, None)
                doc = _add(doc, op.path, copy.deepcopy(op.value))
            case JsonPatchOpKind.MOVE:
                doc, value = _remove(doc, op.from_)
                doc = _add(doc, op.path, value)
            case JsonPatchOpKind.COPY:
                doc = _add(doc, op.path, copy.deepcopy(_get(doc, op.from_)))
            case JsonPatchOpKind.TEST:
                if _get(doc, op.path) != op.value:
                    raise PatchError(f"test {op.path} failed")
    return doc
