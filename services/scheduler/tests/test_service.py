"""The scheduler service through its commands and events (TestNatsBroker, real SQLite, injected clock)."""

from __future__ import annotations

from typing import Any

from flotilla_contracts.v1.common import Taint, TaintEffect
from flotilla_contracts.v1.heartbeat import ClusterHealth
from flotilla_contracts.v1.scheduler import (
    AppliedState,
    ApplySubscriptionReply,
    DeleteSubscriptionReply,
    GetRenderedReply,
    GetSubscriptionReply,
    ListSubscriptionsReply,
)
from flotilla_contracts.v1.scheduler_events import AppliedStatusReported

AGENT = "fleet.v1.agent.{}._cluster.apply"


def deployment(name: str = "web", replicas: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"name": "c", "image": "nginx:1"}]}}},
    }


def spec(name: str = "web", **policy: Any) -> dict[str, Any]:
    return {"name": name, "manifests": [deployment()], "policy": policy}


def apply_body(body: dict[str, Any]) -> dict[str, Any]:
    return {"spec": body}


def placed(info: GetSubscriptionReply) -> dict[str, int | None]:
    return {p.cluster_id: p.replicas for p in info.subscription.placements}


async def get(h: Any, name: str = "web") -> GetSubscriptionReply:
    return await h.ok("subscriptions.get", {"name": name}, GetSubscriptionReply)


async def test_a_subscription_lands_on_matching_clusters_with_rendered_manifests(harness: Any) -> None:
    await harness.join("c1", region="eu")
    await harness.join("c2", region="us")
    await harness.join("c3", region="eu", env="dev")
    await harness.drain()
    reply = await harness.ok("subscriptions.apply", apply_body(spec(selector="env=prod")), ApplySubscriptionReply)
    assert (reply.generation, reply.created, reply.changed) == (1, True, True)
    assert placed(await get(harness)) == {"c1": None, "c2": None}
    out = await harness.drain()
    agent = {s: p for s, _, p in out if s.startswith("fleet.v1.agent.")}
    assert set(agent) == {AGENT.format("c1"), AGENT.format("c2")}
    assert agent[AGENT.format("c1")]["manifests"][0]["metadata"]["name"] == "web"
    decided = [p for _, schema, p in out if schema == "scheduler.PlacementDecided/v1"]
    assert decided[0]["reason"] == "SubscriptionApplied"
    assert decided[0]["added_clusters"] == ["c1", "c2"]
    again = await harness.ok("subscriptions.apply", apply_body(spec(selector="env=prod")), ApplySubscriptionReply)
    assert (again.generation, again.changed) == (1, False)
    assert await harness.drain() == []


async def test_a_joining_cluster_gets_the_workload_and_a_leaving_one_has_it_removed(harness: Any) -> None:
    await harness.join("c1")
    await harness.ok("subscriptions.apply", apply_body(spec(selector="env=prod")), ApplySubscriptionReply)
    await harness.drain()
    await harness.join("c2")
    out = await harness.drain()
    assert [(p["reason"], p["added_clusters"]) for _, s, p in out if s.endswith("PlacementDecided/v1")] == [
        ("ClusterJoined", ["c2"])
    ]
    assert any(s == AGENT.format("c2") and p["placed"] for s, _, p in out)
    await harness.deregister("c1")
    out = await harness.drain()
    assert any(s == AGENT.format("c1") and not p["placed"] and p["manifests"] == [] for s, _, p in out)
    assert placed(await get(harness)) == {"c2": None}


async def test_label_change_moves_the_workload_off_a_cluster_that_no_longer_matches(harness: Any) -> None:
    await harness.join("c1")
    await harness.ok("subscriptions.apply", apply_body(spec(selector="env=prod")), ApplySubscriptionReply)
    await harness.drain()
    await harness.relabel("c1", env="dev")
    out = await harness.drain()
    assert [p["reason"] for s, _, p in out if s.endswith(".decided")] == ["LabelsChanged"]
    assert placed(await get(harness)) == {}


async def test_unreachable_past_toleration_moves_the_share_and_return_does_not_churn(harness: Any) -> None:
    for cid in ("c1", "c2", "c3"):
        await harness.join(cid)
    toleration = {
        "key": "flotilla.dev/unreachable",
        "operator": "Exists",
        "effect": "NoExecute",
        "toleration_seconds": 60,
    }
    body = spec(strategy="Divide", replicas=6, tolerations=[toleration])
    await harness.ok("subscriptions.apply", apply_body(body), ApplySubscriptionReply)
    assert placed(await get(harness)) == {"c1": 2, "c2": 2, "c3": 2}
    await harness.drain()
    await harness.health("c1", ClusterHealth.UNREACHABLE)
    harness.clock.advance(30)
    assert await harness.scheduler.expire_due() == 0
    assert placed(await get(harness)) == {"c1": 2, "c2": 2, "c3": 2}
    harness.clock.advance(31)
    assert await harness.scheduler.expire_due() == 1
    assert placed(await get(harness)) == {"c2": 3, "c3": 3}
    out = await harness.drain()
    decided = [p for s, _, p in out if s.endswith(".decided")]
    assert [(d["reason"], d["removed_clusters"], d["moved_replicas"]) for d in decided] == [
        ("TolerationExpired", ["c1"], 2)
    ]
    replicas = {
        s: p["manifests"][0]["spec"]["replicas"] for s, _, p in out if s.startswith("fleet.v1.agent") and p["placed"]
    }
    assert replicas == {AGENT.format("c2"): 3, AGENT.format("c3"): 3}
    await harness.health("c1", ClusterHealth.READY)
    assert await harness.drain() == []
    assert placed(await get(harness)) == {"c2": 3, "c3": 3}


async def test_noexecute_taint_evicts_at_once_and_noschedule_only_blocks_new(harness: Any) -> None:
    await harness.join("c1")
    await harness.ok("subscriptions.apply", apply_body(spec()), ApplySubscriptionReply)
    await harness.taint("c1", {"env": "prod"}, [Taint(key="maint", effect=TaintEffect.NO_SCHEDULE)])
    assert placed(await get(harness)) == {"c1": None}
    await harness.taint("c1", {"env": "prod"}, [Taint(key="maint", effect=TaintEffect.NO_EXECUTE)])
    assert placed(await get(harness)) == {}
    decided = [p for s, _, p in await harness.drain() if s.endswith(".decided")]
    assert decided[-1]["reason"] == "TaintsChanged"


async def test_overrides_render_global_then_local_by_priority(harness: Any) -> None:
    await harness.join("c1", region="eu")
    await harness.join("c2", region="us")
    body = spec()
    body["overrides"] = [
        {
            "name": "local-image",
            "stage": "local",
            "cluster_ids": ["c1"],
            "type": "JSONPatch",
            "json_patch": [{"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": "nginx:3"}],
        },
        {
            "name": "eu-label",
            "stage": "global",
            "selector": "region=eu",
            "priority": 2,
            "type": "MergePatch",
            "merge_patch": {"metadata": {"labels": {"zone": "eu"}}},
        },
        {
            "name": "all-image",
            "stage": "global",
            "priority": 1,
            "type": "JSONPatch",
            "target": {"kind": "Deployment"},
            "json_patch": [{"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": "nginx:2"}],
        },
    ]
    await harness.ok("subscriptions.apply", apply_body(body), ApplySubscriptionReply)
    c1 = await harness.ok("subscriptions.rendered", {"name": "web", "cluster_id": "c1"}, GetRenderedReply)
    assert c1.overrides_applied == ["all-image", "eu-label", "local-image"]
    assert c1.manifests[0]["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:3"
    assert c1.manifests[0]["metadata"]["labels"] == {"zone": "eu"}
    c2 = await harness.ok("subscriptions.rendered", {"name": "web", "cluster_id": "c2"}, GetRenderedReply)
    assert c2.overrides_applied == ["all-image"]
    assert c2.manifests[0]["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:2"
    # Relabelling c2 into eu re-renders and re-sends it without moving anything.
    await harness.drain()
    await harness.relabel("c2", env="prod", region="eu")
    out = await harness.drain()
    assert [s for s, _, _ in out if s.startswith("fleet.v1.agent")] == [AGENT.format("c2")]
    assert [s for s, _, _ in out if s.endswith(".decided")] == []


async def test_applied_status_and_list_and_delete(harness: Any) -> None:
    await harness.join("c1")
    await harness.ok("subscriptions.apply", apply_body(spec()), ApplySubscriptionReply)
    out = await harness.drain()
    command = next(p for s, _, p in out if s == AGENT.format("c1"))
    info = await get(harness)
    assert [(a.cluster_id, a.state) for a in info.subscription.applied] == [("c1", AppliedState.PENDING)]
    await harness.feed(
        AppliedStatusReported(
            command_id=command["command_id"],
            cluster_id="c1",
            subscription="web",
            generation=1,
            state=AppliedState.APPLIED,
            occurred_at=harness.clock(),
        )
    )
    info = await get(harness)
    assert [(a.cluster_id, a.state) for a in info.subscription.applied] == [("c1", AppliedState.APPLIED)]
    listed = await harness.ok("subscriptions.list", {}, ListSubscriptionsReply)
    assert [(s.name, s.clusters, s.applied) for s in listed.subscriptions] == [("web", 1, 1)]
    deleted = await harness.ok("subscriptions.delete", {"name": "web"}, DeleteSubscriptionReply)
    assert deleted.clusters == 1
    out = await harness.drain()
    assert any(s == AGENT.format("c1") and not p["placed"] for s, _, p in out)
    assert (await harness.ok("subscriptions.list", {}, ListSubscriptionsReply)).subscriptions == []
    assert (await harness.error("subscriptions.get", {"name": "web"}))["code"] == "not_found"


async def test_state_survives_a_restart_and_placing_again_moves_nothing(harness: Any) -> None:
    await harness.join("c1")
    await harness.join("c2")
    await harness.ok("subscriptions.apply", apply_body(spec(strategy="Divide", replicas=5)), ApplySubscriptionReply)
    before = placed(await get(harness))
    await harness.drain()
    await harness.restart()
    assert placed(await get(harness)) == before
    assert await harness.scheduler.expire_due() == 0  # the post-restart re-check
    assert await harness.drain() == []


async def test_capacity_weighting_follows_heartbeat_capacity(harness: Any) -> None:
    await harness.join("c1")
    await harness.join("c2")
    await harness.capacity("c1", 3000)
    await harness.capacity("c2", 1000)
    body = spec(strategy="Divide", replicas=8, weighting="Capacity")
    await harness.ok("subscriptions.apply", apply_body(body), ApplySubscriptionReply)
    assert placed(await get(harness)) == {"c1": 6, "c2": 2}


# --- bad input: refused with a code naming the field, nothing stored ----------------------------------------


async def refused(harness: Any, body: dict[str, Any]) -> dict[str, Any]:
    error = await harness.error("subscriptions.apply", apply_body(body))
    assert (await harness.ok("subscriptions.list", {}, ListSubscriptionsReply)).subscriptions == []
    assert await harness.outbox() == []
    return error


async def test_manifests_that_are_not_kubernetes_objects_are_refused(harness: Any) -> None:
    no_kind = spec()
    del no_kind["manifests"][0]["kind"]
    error = await refused(harness, no_kind)
    assert (error["code"], error["details"]["field"]) == ("invalid_field", "manifests[0].kind")
    no_name = spec()
    no_name["manifests"] = [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}}]
    error = await refused(harness, no_name)
    assert error["details"]["field"] == "manifests[0].metadata.name"
    scalar = spec()
    scalar["manifests"] = ["just a string"]
    assert (await refused(harness, scalar))["code"] == "invalid_field"
    empty = spec()
    empty["manifests"] = []
    assert (await refused(harness, empty))["details"]["field"] == "manifests"


async def test_bad_selectors_and_tolerations_are_refused(harness: Any) -> None:
    error = await refused(harness, spec(selector="env in (prod"))
    assert (error["code"], error["details"]["field"]) == ("invalid_selector", "policy.selector")
    error = await refused(harness, spec(tolerations=[{"key": "a", "operator": "Exists", "value": "x"}]))
    assert error["details"]["field"] == "policy.tolerations[0].value"
    error = await refused(harness, spec(tolerations=[{"key": "bad key!", "operator": "Exists"}]))
    assert error["code"] == "invalid_field"
    assert "tolerations" in str(error)
    error = await refused(harness, spec(tolerations=[{"key": "a", "effect": "NoSchedule", "toleration_seconds": 5}]))
    assert error["details"]["field"] == "policy.tolerations[0].toleration_seconds"
    forever = {"key": "a", "effect": "NoExecute", "toleration_seconds": 10**12}  # no date holds it
    error = await refused(harness, spec(tolerations=[forever]))
    assert (error["code"], error["details"]["field"]) == ("invalid_field", "policy.tolerations[0].toleration_seconds")
    assert "at most 3153600000" in error["message"]
    error = await refused(harness, spec(strategy="Divide", replicas=2**63))  # past SQLite's integers
    assert (error["code"], error["details"]["field"]) == ("invalid_field", "policy.replicas")


async def test_divide_with_impossible_bounds_is_refused(harness: Any) -> None:
    error = await refused(
        harness, spec(strategy="Divide", replicas=4, min_replicas_per_cluster=3, max_replicas_per_cluster=2)
    )
    assert error["details"]["field"] == "policy.min_replicas_per_cluster"
    error = await refused(harness, spec(strategy="Divide", replicas=10, max_clusters=2, max_replicas_per_cluster=4))
    assert error["details"]["field"] == "policy.max_replicas_per_cluster"
    error = await refused(harness, spec(strategy="Divide", replicas=0))
    assert error["details"]["field"] == "policy.replicas"


async def test_overrides_that_cannot_apply_are_refused(harness: Any) -> None:
    await harness.join("c1")
    body = spec()
    body["overrides"] = [
        {
            "name": "bad",
            "stage": "global",
            "type": "JSONPatch",
            "json_patch": [{"op": "remove", "path": "/spec/nothing"}],
        }
    ]
    error = await refused(harness, body)
    assert error["details"]["field"] == "overrides"
    body["overrides"] = [
        {
            "name": "bad",
            "stage": "global",
            "type": "JSONPatch",
            "json_patch": [{"op": "add", "path": "no-slash", "value": 1}],
        }
    ]
    error = await refused(harness, body)
    assert error["details"]["field"] == "overrides[0].json_patch[0]"
