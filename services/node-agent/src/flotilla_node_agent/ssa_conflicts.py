"""Server-side apply conflicts: which fields another manager owns (a 409's causes), and a manifest without them.

Flotilla applies without `force`: a field another field manager owns (an HPA's `.spec.replicas`) makes the
API server answer 409 with one `FieldManagerConflict` cause per field, its path written as
structured-merge-diff prints it: `.spec.replicas`, `.spec.template.spec.containers[name="web"].image`,
`.metadata.finalizers[="x"]`, `.spec.ports[port=80,protocol="TCP"]`, `.items[0]`. Map keys may hold dots
(`.metadata.labels.app.kubernetes.io/name`), so a path is matched against the manifest's own keys, longest
first, not split on dots. Dropping the conflicting fields and applying again gives them up to their owner.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

FIELD_MANAGER_CONFLICT = "FieldManagerConflict"
# Fields that make the object what it is: a conflict on one of them cannot be given up.
_IDENTITY = frozenset({".apiVersion", ".kind", ".metadata", ".metadata.name", ".metadata.namespace"})


@dataclass(frozen=True)
class Conflict:
    """One field another manager owns; `owner` is the server's words, e.g. `conflict with "hpa" using apps/v1`."""

    field: str
    owner: str

    def __str__(self) -> str:
        return f"{self.field} ({self.owner})" if self.owner else self.field


def conflicts_of(status: Any) -> list[Conflict]:
    """The field-manager conflicts a 409 `Status` names; empty when it is another kind of conflict."""
    details = status.get("details") if isinstance(status, dict) else None
    causes = details.get("causes") if isinstance(details, dict) else None
    return [
        Conflict(str(cause.get("field", "")), str(cause.get("message", "")))
        for cause in causes or []
        if isinstance(cause, dict) and cause.get("reason", cause.get("type")) == FIELD_MANAGER_CONFLICT
    ]


class CannotDrop(ValueError):
    """A conflicting field that cannot be given up: it names the object, or the manifest does not hold it."""


def without_fields(manifest: dict[str, Any], fields: list[str]) -> dict[str, Any]:
    """A copy of `manifest` without each field; raises CannotDrop naming the first field it cannot remove."""
    body = copy.deepcopy(manifest)
    for path in fields:
        if path in _IDENTITY or not path.startswith((".", "[")):
            raise CannotDrop(f"{path} identifies the object and cannot be left to another manager")
        if not _drop(body, path):
            raise CannotDrop(f"{path} is not in the manifest")
    return body


def _drop(node: Any, path: str) -> bool:
    if path.startswith("."):
        if not isinstance(node, dict):
            return False
        rest = path[1:]
        for key in sorted((k for k in node if isinstance(k, str) and rest.startswith(k)), key=len, reverse=True):
            tail = rest[len(key) :]
            if tail == "":
                del node[key]
                return True
            if tail[0] in ".[" and _drop(node[key], tail):
                return True
        return False
    if path.startswith("[") and isinstance(node, list):
        end = _closing(path)
        if end < 0:
            return False
        index = _select(node, path[1:end])
        if index is None:
            return False
        tail = path[end + 1 :]
        if tail == "":
            del node[index]
            return True
        return _drop(node[index], tail)
    return False


def _closing(path: str) -> int:
    """The index of the `]` that closes the `[` at 0, skipping quoted strings; -1 when there is none."""
    quoted = escaped = False
    for i, char in enumerate(path):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = quoted
        elif char == '"':
            quoted = not quoted
        elif char == "]" and not quoted:
            return i
    return -1


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _split(selector: str) -> list[str]:
    """`a="x,y",b=2` -> [`a="x,y"`, `b=2`]: commas inside quotes do not split."""
    parts, start, quoted, escaped = [], 0, False, False
    for i, char in enumerate(selector):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = quoted
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            parts.append(selector[start:i])
            start = i + 1
    parts.append(selector[start:])
    return parts


def _select(items: list[Any], selector: str) -> int | None:
    """The list index a path element picks: `[3]`, `[="v"]` (a set's value) or `[k=v,...]` (an associative key)."""
    if selector.isdigit():
        return int(selector) if int(selector) < len(items) else None
    if selector.startswith("="):
        wanted = _value(selector[1:])
        return next((i for i, item in enumerate(items) if item == wanted), None)
    keys = [(name, _value(value)) for name, _, value in (part.partition("=") for part in _split(selector))]
    for i, item in enumerate(items):
        # A key the server defaulted (a port's protocol) may be absent from what we sent.
        if isinstance(item, dict) and any(k in item for k, _ in keys) and all(item.get(k, v) == v for k, v in keys):
            return i
    return None
