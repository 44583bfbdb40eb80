"""Rendering: replica shares, JSON Patch (RFC 6902) and merge patch (RFC 7386), stage and priority order."""

from __future__ import annotations

from typing import Any

import pytest

from flotilla_contracts.v1.scheduler import (
    JsonPatchOp,
    JsonPatchOpKind,
    ManifestSelector,
    Override,
    OverrideStage,
    PatchType,
)
from flotilla_scheduler.overrides import PatchError, apply_json_patch, compile_overrides, merge_patch, render

DOC: dict[str, Any] = {
    "kind": "Deployment",
    "metadata": {"name": "web", "labels": {"a": "1"}},
    "spec": {"list": [1, 2]},
}


def op(kind: str, path: str, value: Any = None, from_: str = "") -> JsonPatchOp:
    return JsonPatchOp(op=JsonPatchOpKind(kind), path=path, value=value, from_=from_)


def test_json_patch_operations_and_escaped_pointers() -> None:
    out = apply_json_patch(
        DOC,
        [
            op("add", "/spec/list/-", 3),
            op("add", "/metadata/annotations", {"x/y": "1"}),
            op("replace", "/metadata/annotations/x~1y", "2"),
            op("copy", "/spec/copied", from_="/spec/list"),
            op("move", "/spec/moved", from_="/metadata/labels"),
            op("remove", "/spec/list/0"),
            op("test", "/spec/moved/a", "1"),
        ],
    )
    assert out["spec"] == {"list": [2, 3], "copied": [1, 2, 3], "moved": {"a": "1"}}
    assert out["metadata"] == {"name": "web", "annotations": {"x/y": "2"}}
    assert DOC["spec"]["list"] == [1, 2]  # the input is not changed


@pytest.mark.parametrize(
    "ops",
    [
        [op("remove", "/spec/missing")],
        [op("replace", "/spec/list/5", 1)],
        [op("test", "/kind", "Pod")],
        [op("add", "x", 1)],
    ],
)
def test_a_patch_that_cannot_apply_raises(ops: list[JsonPatchOp]) -> None:
    with pytest.raises(PatchError):
        apply_json_patch(DOC, ops)


def test_merge_patch_null_removes_and_objects_merge() -> None:
    assert merge_patch(DOC, {"metadata": {"labels": None, "namespace": "x"}, "spec": {"list": [9]}}) == {
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "x"},
        "spec": {"list": [9]},
    }


def test_render_sets_the_share_then_global_then_local_by_priority_and_targets_by_kind() -> None:
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {}}
    overrides = compile_overrides(
        [
            Override(name="late", stage=OverrideStage.LOCAL, cluster_ids=["c1"], type=PatchType.MERGE_PATCH,
                     target=ManifestSelector(kind="Deployment"),
                     merge_patch={"spec": {"replicas": 7}}),
            Override(name="second", stage=OverrideStage.GLOBAL, priority=5, type=PatchType.MERGE_PATCH,
                     merge_patch={"metadata": {"labels": {"a": "second"}}}),
            Override(name="first", stage=OverrideStage.GLOBAL, priority=1, selector="region=eu",
                     target=ManifestSelector(kind="Deployment"), type=PatchType.MERGE_PATCH,
                     merge_patch={"metadata": {"labels": {"a": "first", "b": "first"}}}),
        ]
    )  # fmt: skip
    out = render([DOC, config], overrides, "c1", {"region": "eu"}, replicas=3)
    assert out.overrides_applied == ["first", "second", "late"]
    assert out.manifests[0]["metadata"]["labels"] == {"a": "second", "b": "first"}
    assert out.manifests[0]["spec"]["replicas"] == 7
    assert "replicas" not in out.manifests[1].get("spec", {})
    other = render([DOC], overrides, "c2", {"region": "us"}, replicas=3)
    assert other.overrides_applied == ["second"]
    assert other.manifests[0]["spec"]["replicas"] == 3
