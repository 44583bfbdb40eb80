"""The cluster agent's applier over the simulated cluster: apply, prune, remove, report, skip stale, retry."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

from flotilla_contracts.v1.scheduler import AppliedState
from flotilla_contracts.v1.scheduler_events import ApplyManifests, ApplyResult
from flotilla_node_agent.applier import ManifestApplier, RetryLater
from flotilla_node_agent.apply_backends import ApplyFailed, ObjectRef, SimApplyBackend
from flotilla_runtime.logs import get_logger
from flotilla_runtime.migrations import load_migrations
from flotilla_runtime.store import Store


def deployment(name: str, replicas: int = 1) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name}, "spec": {"replicas": replicas}}


def config_map(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "web"}, "data": {"a": "1"}}


def apply_command(
    manifests: list[dict[str, Any]], generation: int = 1, decision: int = 1, placed: bool = True
) -> ApplyManifests:
    return ApplyManifests(
        command_id=f"cmd-{generation}-{decision}",
        cluster_id="c1",
        subscription="web",
        generation=generation,
        decision=decision,
        placed=placed,
        manifests=manifests,
        issued_at=datetime.now(UTC),
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await Store.open(tmp_path / "journal.db", load_migrations("flotilla_node_agent", "node-agent"))
    yield store
    await store.close()


def applier(store: Store, backend: Any) -> ManifestApplier:
    return ManifestApplier(None, store, backend, get_logger("test"))  # type: ignore[arg-type]


async def reports(store: Store) -> list[tuple[str, dict[str, Any]]]:
    rows = await store.fetchall("SELECT subject, payload FROM outbox ORDER BY seq")
    return [(row["subject"], msgspec.json.decode(row["payload"])) for row in rows]


async def test_applies_then_prunes_what_is_no_longer_wanted_and_reports_each_object(store: Store) -> None:
    sim = SimApplyBackend()
    agent = applier(store, sim)
    first = await agent.apply(apply_command([deployment("web"), config_map("settings")]))
    assert first is not None and first.state is AppliedState.APPLIED
    assert [r.result for r in first.resources] == [ApplyResult.CREATED, ApplyResult.CREATED]
    assert set(sim.objects) == {
        ObjectRef("apps/v1", "Deployment", "default", "web"),
        ObjectRef("v1", "ConfigMap", "web", "settings"),
    }
    second = await agent.apply(apply_command([deployment("web", replicas=3)], generation=2, decision=2))
    assert second is not None
    assert [(r.kind, r.result) for r in second.resources] == [
        ("Deployment", ApplyResult.CONFIGURED),
        ("ConfigMap", ApplyResult.DELETED),
    ]
    assert sim.objects[ObjectRef("apps/v1", "Deployment", "default", "web")]["spec"]["replicas"] == 3
    same = await agent.apply(apply_command([deployment("web", replicas=3)], generation=2, decision=3))
    assert same is not None and [r.result for r in same.resources] == [ApplyResult.UNCHANGED]
    subjects = [s for s, _ in await reports(store)]
    assert subjects == ["fleet.v1.evt.applied.c1.web.reported"] * 3


async def test_removal_deletes_everything_and_reports_removed(store: Store) -> None:
    sim = SimApplyBackend()
    agent = applier(store, sim)
    await agent.apply(apply_command([deployment("web"), config_map("settings")]))
    gone = await agent.apply(apply_command([], decision=2, placed=False))
    assert gone is not None and gone.state is AppliedState.REMOVED
    assert sim.objects == {}
    assert [h[0] for h in sim.history] == ["apply", "apply", "delete", "delete"]


async def test_a_stale_command_is_skipped_without_touching_the_cluster(store: Store) -> None:
    sim = SimApplyBackend()
    agent = applier(store, sim)
    await agent.apply(apply_command([deployment("web", 2)], generation=2, decision=5))
    assert await agent.apply(apply_command([deployment("web", 9)], generation=2, decision=4)) is None
    assert sim.objects[ObjectRef("apps/v1", "Deployment", "default", "web")]["spec"]["replicas"] == 2
    assert len(await reports(store)) == 1


async def test_a_refused_object_fails_the_report_but_the_rest_is_applied(store: Store) -> None:
    sim = SimApplyBackend(fail_kinds=frozenset({"ConfigMap"}))
    report = await applier(store, sim).apply(apply_command([deployment("web"), config_map("settings")]))
    assert report is not None and report.state is AppliedState.FAILED
    assert "refuses ConfigMap" in report.message
    assert [r.result for r in report.resources] == [ApplyResult.CREATED, ApplyResult.FAILED]


class Unavailable(SimApplyBackend):
    async def apply(self, manifest: dict[str, Any], field_manager: str) -> ApplyResult:
        raise ApplyFailed("API server down", temporary=True)


async def test_an_unavailable_api_server_commits_nothing_so_the_command_is_retried(store: Store) -> None:
    with pytest.raises(RetryLater):
        await applier(store, Unavailable()).apply(apply_command([deployment("web")]))
    assert await reports(store) == []
    assert await store.fetchall("SELECT * FROM applied_subscriptions") == []
