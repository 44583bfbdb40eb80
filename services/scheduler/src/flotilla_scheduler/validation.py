"""Checks a subscription before anything is stored; each refusal names the field and carries a stable code.

msgspec already checked types, ranges and label syntax when the request was decoded. This adds what a
schema cannot say: manifests that are Kubernetes objects, selectors that parse, tolerations that make
sense, Divide bounds that can be met, overrides that can apply.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flotilla_contracts.errors import ErrorCode
from flotilla_contracts.v1.common import TaintEffect
from flotilla_contracts.v1.scheduler import (
    JsonPatchOpKind,
    OverrideStage,
    PatchType,
    Strategy,
    SubscriptionSpec,
    TolerationOperator,
)
from flotilla_kube.selectors import SelectorError, parse_selector
from flotilla_scheduler.overrides import PatchError, parse_pointer

_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]*(/[A-Za-z0-9][A-Za-z0-9.-]*)?$")


@dataclass(frozen=True)
class SpecError(Exception):
    """Why a subscription is refused: a code, the field (a path such as `manifests[2].kind`) and a message."""

    code: ErrorCode
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def _manifest_key(index: int, manifest: Mapping[str, Any]) -> tuple[str, str, str, str]:
    where = f"manifests[{index}]"
    if not isinstance(manifest, Mapping):
        raise SpecError(ErrorCode.INVALID_FIELD, where, "a manifest must be a Kubernetes object (a mapping)")
    api_version = manifest.get("apiVersion")
    if not isinstance(api_version, str) or not _SEGMENT_RE.match(api_version):
        raise SpecError(ErrorCode.INVALID_FIELD, f"{where}.apiVersion", "missing or not an API version (e.g. apps/v1)")
    kind = manifest.get("kind")
    if not isinstance(kind, str) or not kind[:1].isupper() or not kind.isalnum():
        raise SpecError(ErrorCode.INVALID_FIELD, f"{where}.kind", "missing or not a Kubernetes kind (e.g. Deployment)")
    meta = manifest.get("metadata")
    if not isinstance(meta, Mapping):
        raise SpecError(ErrorCode.INVALID_FIELD, f"{where}.metadata", "missing metadata")
    name = meta.get("name")
    if not isinstance(name, str) or len(name) > 253 or not _NAME_RE.match(name):
        raise SpecError(ErrorCode.INVALID_FIELD, f"{where}.metadata.name", "missing or not a Kubernetes name")
    namespace = meta.get("namespace", "")
    if not isinstance(namespace, str) or (namespace and not _NAME_RE.match(namespace)):
        raise SpecError(ErrorCode.INVALID_FIELD, f"{where}.metadata.namespace", "not a Kubernetes namespace name")
    return api_version, kind, namespace, name


def _selector(text: str, field: str) -> None:
    try:
        parse_selector(text)
    except SelectorError as exc:
        raise SpecError(ErrorCode.INVALID_SELECTOR, field, str(exc)) from None


# Upper bounds the contract leaves open: a date past year 9999 or an int past SQLite's would fail every later
# placement of the subscription instead of this one request.
MAX_TOLERATION_S = 100 * 365 * 86400
MAX_REPLICAS = 2**31 - 1


def validate(spec: SubscriptionSpec) -> None:
    """Raise SpecError for the first problem found; return None when the subscription can be stored."""
    if not spec.manifests:
        raise SpecError(ErrorCode.INVALID_FIELD, "manifests", "a subscription needs at least one manifest")
    seen: dict[tuple[str, str, str, str], int] = {}
    for i, manifest in enumerate(spec.manifests):
        key = _manifest_key(i, manifest)
        if key in seen:
            raise SpecError(ErrorCode.INVALID_FIELD, f"manifests[{i}]", f"the same object as manifests[{seen[key]}]")
        seen[key] = i
    policy = spec.policy
    _selector(policy.selector, "policy.selector")
    for i, toleration in enumerate(policy.tolerations):
        where = f"policy.tolerations[{i}]"
        if toleration.operator is TolerationOperator.EXISTS and toleration.value:
            raise SpecError(ErrorCode.INVALID_FIELD, f"{where}.value", "must be empty when the operator is Exists")
        if toleration.operator is TolerationOperator.EQUAL and not toleration.key:
            raise SpecError(ErrorCode.INVALID_FIELD, f"{where}.key", "an Equal toleration needs a key")
        if toleration.toleration_seconds is not None and toleration.effect is not TaintEffect.NO_EXECUTE:
            raise SpecError(
                ErrorCode.INVALID_FIELD, f"{where}.toleration_seconds", "only a NoExecute toleration has seconds"
            )
        if toleration.toleration_seconds is not None and toleration.toleration_seconds > MAX_TOLERATION_S:
            raise SpecError(
                ErrorCode.INVALID_FIELD,
                f"{where}.toleration_seconds",
                f"at most {MAX_TOLERATION_S} (a hundred years); leave it unset to tolerate the taint for good",
            )
    if policy.replicas > MAX_REPLICAS:
        raise SpecError(ErrorCode.INVALID_FIELD, "policy.replicas", f"at most {MAX_REPLICAS} (a Kubernetes int32)")
    for i, weight in enumerate(policy.static_weights):
        _selector(weight.selector, f"policy.static_weights[{i}].selector")
    if policy.strategy is Strategy.DIVIDE:
        _divide_bounds(spec)
    names: set[str] = set()
    for i, override in enumerate(spec.overrides):
        _override(i, override, names)


def _divide_bounds(spec: SubscriptionSpec) -> None:
    policy = spec.policy
    low, high = policy.min_replicas_per_cluster, policy.max_replicas_per_cluster
    if policy.replicas < 1:
        raise SpecError(ErrorCode.INVALID_FIELD, "policy.replicas", "Divide needs at least one replica")
    if high is not None and low > high:
        raise SpecError(
            ErrorCode.INVALID_FIELD, "policy.min_replicas_per_cluster", f"minimum {low} is above the maximum {high}"
        )
    if low > policy.replicas:
        raise SpecError(
            ErrorCode.INVALID_FIELD,
            "policy.min_replicas_per_cluster",
            f"minimum {low} per cluster is above the {policy.replicas} replicas to divide",
        )
    if high is not None and policy.max_clusters is not None and high * policy.max_clusters < policy.replicas:
        raise SpecError(
            ErrorCode.INVALID_FIELD,
            "policy.max_replicas_per_cluster",
            f"{policy.max_clusters} clusters of at most {high} cannot hold {policy.replicas} replicas",
        )


def _override(i: int, override: Any, names: set[str]) -> None:
    where = f"overrides[{i}]"
    if override.name in names:
        raise SpecError(ErrorCode.INVALID_FIELD, f"{where}.name", f"another override is named {override.name}")
    names.add(override.name)
    _selector(override.selector, f"{where}.selector")
    if override.stage is OverrideStage.LOCAL and not override.cluster_ids:
        raise SpecError(ErrorCode.INVALID_FIELD, f"{where}.cluster_ids", "a local override names its clusters")
    if override.type is PatchType.MERGE_PATCH:
        if not override.merge_patch:
            raise SpecError(ErrorCode.INVALID_FIELD, f"{where}.merge_patch", "a MergePatch override needs a patch")
        return
    if not override.json_patch:
        raise SpecError(ErrorCode.INVALID_FIELD, f"{where}.json_patch", "a JSONPatch override needs operations")
    for j, op in enumerate(override.json_patch):
        try:
            parse_pointer(op.path)
            if op.op in (JsonPatchOpKind.MOVE, JsonPatchOpKind.COPY):
                if not op.from_:
                    raise PatchError(f"{op.op.value} needs 'from'")
                parse_pointer(op.from_)
        except PatchError as exc:
            raise SpecError(ErrorCode.INVALID_FIELD, f"{where}.json_patch[{j}]", str(exc)) from None
