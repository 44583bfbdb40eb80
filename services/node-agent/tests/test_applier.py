"""The cluster agent's applier over the simulated cluster: apply, prune, remove, report, skip stale, retry,
scope from the backend, unknown kinds fail only their object."""

from __future__ import annotations

import asyncio
import types
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import nats.errors
import pytest

from flotilla_contracts.v1.scheduler import AppliedState
from flotilla_contracts.v1.scheduler_events import ApplyManifests, ApplyResult
from flotilla_node_agent.applier import ManifestApplier, RetryLater
from flotilla_node_agent.apply_backends import Applied, ApplyFailed, SimApplyBackend
from flotilla_node_agent.restmap import ObjectRef
from flotilla_runtime.logs import get_logger
from flotilla_runtime.migrations import load_migrations
from flotilla_runtime.store import Store
from flotilla_testkit import eventually


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
    return ManifestApplier(None, store, backend, get_logger("test"))


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
    async def apply(self, ref: ObjectRef, manifest: dict[str, Any], field_manager: str) -> Applied:
        raise ApplyFailed("API server down", temporary=True)


class DiscoveryDown(SimApplyBackend):
    async def resolve(self, manifest: dict[str, Any]) -> ObjectRef:
        raise ApplyFailed("GET /apis/apps/v1 answered 503", temporary=True)


@pytest.mark.parametrize("backend", [Unavailable(), DiscoveryDown()], ids=["apply", "discovery"])
async def test_an_unavailable_api_server_commits_nothing_so_the_command_is_retried(
    store: Store, backend: SimApplyBackend
) -> None:
    with pytest.raises(RetryLater):
        await applier(store, backend).apply(apply_command([deployment("web")]))
    assert await reports(store) == []
    assert await store.fetchall("SELECT * FROM applied_subscriptions") == []


def cluster_issuer(name: str, namespace: str = "") -> dict[str, Any]:
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": "cert-manager.io/v1", "kind": "ClusterIssuer", "metadata": meta, "spec": {}}


async def test_a_cluster_scoped_object_is_stored_without_a_namespace_whatever_the_manifest_says(store: Store) -> None:
    sim = SimApplyBackend()
    report = await applier(store, sim).apply(apply_command([cluster_issuer("letsencrypt", namespace="web")]))
    assert report is not None and [(r.namespace, r.result) for r in report.resources] == [("", ApplyResult.CREATED)]
    assert list(sim.objects) == [ObjectRef("cert-manager.io/v1", "ClusterIssuer", "", "letsencrypt")]
    # the inventory (what prune deletes later) holds the same scope: removing deletes exactly that object
    await applier(store, sim).apply(apply_command([], decision=2, placed=False))
    assert sim.history[-1][:2] == ("delete", ObjectRef("cert-manager.io/v1", "ClusterIssuer", "", "letsencrypt"))
    assert sim.objects == {}


async def test_an_inventory_with_a_guessed_scope_is_rescoped_so_the_object_is_not_pruned(store: Store) -> None:
    """An older agent stored a ClusterIssuer under "default"; the next apply must not delete what it applies."""
    sim = SimApplyBackend()
    guessed = [("cert-manager.io/v1", "ClusterIssuer", "default", "letsencrypt")]
    async with store.transaction() as tx:
        await tx.execute(
            "INSERT INTO applied_subscriptions (cluster_id, subscription, generation, decision, objects, applied_at) "
            "VALUES ('c1', 'web', 1, 1, ?, 0)",
            (msgspec.json.encode(guessed),),
        )
    report = await applier(store, sim).apply(apply_command([cluster_issuer("letsencrypt")], decision=2))
    assert report is not None and [r.result for r in report.resources] == [ApplyResult.CREATED]
    assert [h[0] for h in sim.history] == ["apply"]


async def test_a_new_api_version_of_the_same_object_is_not_pruned(store: Store) -> None:
    sim = SimApplyBackend()
    agent = applier(store, sim)
    beta = {**cluster_issuer("letsencrypt"), "apiVersion": "cert-manager.io/v1beta1"}
    await agent.apply(apply_command([beta]))
    report = await agent.apply(apply_command([cluster_issuer("letsencrypt")], decision=2))
    assert report is not None and [(r.api_version, r.result) for r in report.resources] == [
        ("cert-manager.io/v1", ApplyResult.CREATED)  # the simulated cluster keys by version; nothing deleted
    ]
    assert "delete" not in [h[0] for h in sim.history]


async def test_an_unknown_kind_fails_only_its_object_and_what_it_applied_before_is_not_pruned(store: Store) -> None:
    sim = SimApplyBackend()
    agent = applier(store, sim)
    await agent.apply(apply_command([deployment("web"), cluster_issuer("letsencrypt")]))
    sim.unknown_kinds = frozenset({"ClusterIssuer"})  # e.g. cert-manager's CRDs were removed for a while
    report = await agent.apply(apply_command([deployment("web", 2), cluster_issuer("letsencrypt")], decision=2))
    assert report is not None and report.state is AppliedState.FAILED
    assert [(r.kind, r.result) for r in report.resources] == [
        ("Deployment", ApplyResult.CONFIGURED),
        ("ClusterIssuer", ApplyResult.FAILED),
    ]
    assert "serves no kind ClusterIssuer" in report.message
    assert "delete" not in [h[0] for h in sim.history]
    sim.unknown_kinds = frozenset()
    gone = await agent.apply(apply_command([], decision=3, placed=False))
    assert gone is not None and sim.objects == {}  # still in the inventory, so removal deletes it


class Conflicted(SimApplyBackend):
    async def apply(self, ref: ObjectRef, manifest: dict[str, Any], field_manager: str) -> Applied:
        applied = await super().apply(ref, manifest, field_manager)
        return Applied(applied.result, 'left to their other managers: .spec.replicas (conflict with "hpa")')


async def test_fields_left_to_other_managers_are_named_in_the_object_and_the_report(store: Store) -> None:
    report = await applier(store, Conflicted()).apply(apply_command([deployment("web")]))
    assert report is not None and report.state is AppliedState.APPLIED
    assert report.resources[0].message.endswith('.spec.replicas (conflict with "hpa")')
    assert (
        report.message == "1 object(s) applied; Deployment default/web: left to their other managers: "
        '.spec.replicas (conflict with "hpa")'
    )


class SlowJetStream:
    """A JetStream whose consumer creations take as long as the test says; counts how many are in flight."""

    def __init__(self) -> None:
        self.in_flight = self.peak = self.created = 0
        self.answer = asyncio.Event()

    async def pull_subscribe(self, *_args: Any, **_kwargs: Any) -> Any:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await self.answer.wait()
        finally:
            self.in_flight -= 1
        self.created += 1
        raise nats.errors.TimeoutError  # the loaded server's answer came too late: the applier tries again


async def _nothing() -> None:
    return None


class Bus:
    _reconnected_cb = None

    async def subscribe(self, *_args: Any, **_kwargs: Any) -> Any:
        return types.SimpleNamespace(unsubscribe=_nothing)


async def test_the_cluster_agents_of_one_process_create_their_consumers_within_its_gate(store: Store) -> None:
    """10,000 cluster agents of one sim creating their work-queue consumers at once timed JetStream's API out
    (docs/scale.md): they take turns at the process's gate, as its nodes do."""
    js, gate = SlowJetStream(), asyncio.Semaphore(3)
    appliers = [
        ManifestApplier(js, store, SimApplyBackend(), get_logger("test"), gate=gate)  # type: ignore[arg-type]
        for _ in range(12)
    ]
    runs = [asyncio.create_task(a.run(f"c{i}", Bus())) for i, a in enumerate(appliers)]  # type: ignore[arg-type]
    try:
        await eventually(lambda: js.in_flight == 3, "the gate's three creations in flight")
        js.answer.set()  # answered (late): each tries again, still three at a time
        await eventually(lambda: js.created >= 24, "every applier's creation answered, and tried again")
        assert js.peak == 3
    finally:
        for run in runs:
            run.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
