"""Compares two JSON Schemas of one message and lists what would break a reader or writer of the old one.

Within v1 a message may only gain fields with defaults and enum values; anything else is breaking and
belongs in a v2 message served beside v1. Pure functions on parsed JSON, no I/O.

Reported: a field removed; a type changed (anywhere, including inside nested or `$ref`'d structs, list
items and map values; widening counts too, since an old reader cannot decode the new values); a new
required field, or a field becoming required; an enum value removed; a constraint tightened (max
lowered, min raised, a new or changed pattern or format).
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

_UPPER_BOUNDS = ("maxLength", "maxItems", "maxProperties", "maximum", "exclusiveMaximum")
_LOWER_BOUNDS = ("minLength", "minItems", "minProperties", "minimum", "exclusiveMinimum")


class _Doc:
    """A schema document with `$ref` resolution inside it."""

    def __init__(self, root: Schema) -> None:
        self.root = root

    def resolve(self, node: Schema) -> tuple[Schema, str]:
        """Follow `$ref`s; return the target node and the last ref's name (empty if none)."""
        name = ""
        seen: set[str] = set()
        while "$ref" in node:
            ref = node["$ref"]
            if not isinstance(ref, str) or not ref.startswith("#/") or ref in seen:
                raise ValueError(f"unsupported or circular $ref {ref!r}")
            seen.add(ref)
            target: Any = self.root
            for part in ref[2:].split("/"):
                target = target[part.replace("~1", "/").replace("~0", "~")]
            name = ref.rsplit("/", 1)[-1]
            node = target
        return node, name


def _kind(node: Schema) -> str:
    """A coarse type signature: what a reader must be able to decode."""
    if "enum" in node:
        return "enum"
    if "const" in node:
        return f"const {node['const']!r}"
    kind = node.get("type")
    if isinstance(kind, list):
        return "|".join(sorted(str(k) for k in kind))
    if kind is None:
        return "any" if not node.get("anyOf") else "anyOf"
    if kind == "object":
        return "struct" if "properties" in node or "required" in node else "map"
    if kind == "string" and "format" in node:
        return f"string({node['format']})"
    return str(kind)


def _alternatives(doc: _Doc, node: Schema) -> list[tuple[Schema, str]]:
    resolved, name = doc.resolve(node)
    if "anyOf" in resolved or "oneOf" in resolved:
        out: list[tuple[Schema, str]] = []
        for alt in resolved.get("anyOf", []) + resolved.get("oneOf", []):
            out.extend(_alternatives(doc, alt))
        return out
    return [(resolved, name)]


def _describe(alts: list[tuple[Schema, str]]) -> str:
    return " | ".join(name or _kind(node) for node, name in alts)


class _Comparer:
    def __init__(self, old: Schema, new: Schema) -> None:
        self.old = _Doc(old)
        self.new = _Doc(new)
        self.problems: list[str] = []
        self._done: set[tuple[int, int, str]] = set()

    def report(self, path: str, text: str) -> None:
        self.problems.append(f"{path or '(root)'}: {text}")

    def compare(self, old: Schema, new: Schema, path: str) -> None:
        old_alts = _alternatives(self.old, old)
        new_alts = _alternatives(self.new, new)
        if len(old_alts) == 1 and len(new_alts) == 1:
            self._single(old_alts[0][0], new_alts[0][0], path)
            return
        unmatched_new = list(new_alts)
        pairs: list[tuple[Schema, Schema]] = []
        for old_node, old_name in old_alts:
            match = next(
                (alt for alt in unmatched_new if _kind(alt[0]) == _kind(old_node) and alt[1] == old_name), None
            ) or next((alt for alt in unmatched_new if _kind(alt[0]) == _kind(old_node)), None)
            if match is None:
                self.report(path, f"type changed from {_describe(old_alts)} to {_describe(new_alts)}")
                return
            unmatched_new.remove(match)
            pairs.append((old_node, match[0]))
        if unmatched_new:
            self.report(path, f"type changed from {_describe(old_alts)} to {_describe(new_alts)}")
            return
        for old_node, new_node in pairs:
            self._single(old_node, new_node, path)

    def _single(self, old: Schema, new: Schema, path: str) -> None:
        key = (id(old), id(new), path)
        if key in self._done:
            return
        self._done.add(key)
        old_kind, new_kind = _kind(old), _kind(new)
        if old_kind != new_kind:
            self.report(path, f"type changed from {old_kind} to {new_kind}")
            return
        self._constraints(old, new, path)
        if old_kind == "enum":
            removed = [value for value in old["enum"] if value not in new["enum"]]
            if removed:
                self.report(path, f"enum value(s) removed: {', '.join(map(str, removed))}")
        elif old_kind == "struct":
            self._struct(old, new, path)
        elif old_kind == "array":
            self._child(old, new, "items", f"{path}[]")
        elif old_kind == "map":
            self._child(old, new, "additionalProperties", f"{path}{{}}")
            self._child(old, new, "propertyNames", f"{path}{{key}}")

    def _child(self, old: Schema, new: Schema, key: str, path: str) -> None:
        old_child, new_child = old.get(key), new.get(key)
        if isinstance(old_child, dict) and isinstance(new_child, dict):
            self.compare(old_child, new_child, path)
        elif isinstance(new_child, dict) and new_child and old_child in (None, True, {}):
            self.report(path, "now constrained where anything was accepted")

    def _struct(self, old: Schema, new: Schema, path: str) -> None:
        old_props: Schema = old.get("properties", {})
        new_props: Schema = new.get("properties", {})
        old_required = set(old.get("required", []))
        prefix = f"{path}." if path else ""
        for name in old_props:
            if name not in new_props:
                self.report(f"{prefix}{name}", "field removed")
        for name in new.get("required", []):
            if name not in old_props:
                self.report(f"{prefix}{name}", "new required field (a new field needs a default)")
            elif name not in old_required:
                self.report(f"{prefix}{name}", "field became required")
        for name, old_prop in old_props.items():
            if name in new_props:
                self.compare(old_prop, new_props[name], f"{prefix}{name}")

    def _constraints(self, old: Schema, new: Schema, path: str) -> None:
        for key in _UPPER_BOUNDS:
            if key in new and (key not in old or new[key] < old[key]):
                self.report(path, f"constraint tightened: {key} {old.get(key, 'none')} -> {new[key]}")
        for key in _LOWER_BOUNDS:
            if key in new and (key not in old or new[key] > old[key]):
                self.report(path, f"constraint tightened: {key} {old.get(key, 'none')} -> {new[key]}")
        for key in ("pattern", "format", "multipleOf"):
            if key in new and new[key] != old.get(key):
                self.report(path, f"constraint changed: {key} {old.get(key)!r} -> {new[key]!r}")


def breaking_changes(old: Schema, new: Schema) -> list[str]:
    """Every breaking difference from `old` to `new` (two JSON Schemas of one message), in order found."""
    comparer = _Comparer(old, new)
    comparer.compare(old, new, "")
    return comparer.problems


def subject_changes(old_asyncapi: Schema, new_asyncapi: Schema) -> list[str]:
    """Breaking differences between two AsyncAPI documents: a subject removed, or a message taken off one."""
    problems: list[str] = []
    new_by_address = {channel.get("address"): channel for channel in new_asyncapi.get("channels", {}).values()}
    for channel in old_asyncapi.get("channels", {}).values():
        address = channel.get("address")
        if address is None:
            continue
        if address not in new_by_address:
            problems.append(f"subject {address}: removed")
            continue
        gone = set(channel.get("messages", {})) - set(new_by_address[address].get("messages", {}))
        if gone:
            problems.append(f"subject {address}: no longer carries {', '.join(sorted(gone))}")
    return problems
