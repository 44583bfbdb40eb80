"""Fleet disruption in the scheduler: past the share, nothing moves off Unreachable clusters (new placements still go
to healthy ones), an event says so, the hold survives a restart, and re-placement resumes on recovery."""

from __future__ import annotations

from typing import Any

from flotilla_contracts.v1.heartbeat import ClusterHealth
from flotilla_contracts.v1.scheduler import ApplySubscriptionReply, GetSubscriptionReply

TOLERATE_30S = {
    "key": "flotilla.dev/unreachable",
    "operator": "Exists",
    "effect": "NoExecute",
    "toleration_seconds": 30,
}


def spec(name: str, **policy: Any) -> dict[str, Any]:
    manifest = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"}}
    return {"spec": {"name": name, "manifests": [manifest], "policy": policy}}


async def placed(h: Any, name: str) -> dict[str, int | None]:
    info = await h.ok("subscriptions.get", {"name": name}, GetSubscriptionReply)
    return {p.cluster_id: p.replicas for p in info.subscription.placements}


def schemas(out: list[tuple[str, str, dict[str, Any]]]) -> list[str]:
    return [schema for _, schema, _ in out if not schema.endswith("ApplyManifests")]


async def test_a_disrupted_fleet_holds_placements_and_resumes_on_recovery(harness: Any) -> None:
    clusters = [f"c{i}" for i in range(10)]
    for cid in clusters:
        await harness.join(cid)
    body = spec("web", strategy="Divide", replicas=10, tolerations=[TOLERATE_30S])
    await harness.ok("subscriptions.apply", body, ApplySubscriptionReply)
    everywhere = await placed(harness, "web")
    assert everywhere == dict.fromkeys(clusters, 1)
    await harness.drain()

    for cid in clusters[:5]:  # 50%: below the 55% share, nothing declared
        await harness.health(cid, ClusterHealth.UNREACHABLE)
    assert "scheduler.FleetDisrupted/v1" not in schemas(await harness.outbox())
    await harness.health("c5", ClusterHealth.UNREACHABLE)  # 6 of 10 within the window
    out = await harness.drain()
    disrupted = [p for _, s, p in out if s == "scheduler.FleetDisrupted/v1"]
    assert len(disrupted) == 1 and disrupted[0]["began"][0]["unreachable"] == 6, out
    assert [s for s, schema, _ in out if schema == "scheduler.FleetDisrupted/v1"] == [
        "fleet.v1.evt.placement._fleet.disrupted"
    ]

    harness.clock.advance(31)  # every toleration ran out: without the hold all six would move
    await harness.scheduler.expire_due()
    assert await placed(harness, "web") == everywhere
    await harness.ok("subscriptions.apply", spec("new", strategy="Replicate"), ApplySubscriptionReply)
    assert set(await placed(harness, "new")) == set(clusters[6:])  # new work goes to healthy clusters only
    await harness.drain()

    await harness.restart()
    await harness.scheduler.expire_due()
    assert await placed(harness, "web") == everywhere  # the verdict survived the restart
    assert "scheduler.PlacementDecided/v1" not in schemas(await harness.drain())

    for cid in clusters[:3]:  # 3 of 10 Unreachable: below the 35% recovery share
        await harness.health(cid, ClusterHealth.READY)
    out = await harness.drain()
    assert "scheduler.FleetRecovered/v1" in schemas(out)
    moved = [p for _, schema, p in out if schema == "scheduler.PlacementDecided/v1" and p["subscription"] == "web"]
    assert moved == []  # the still-Unreachable tolerate 30 s from the recovery
    harness.clock.advance(29)
    await harness.scheduler.expire_due()
    assert await placed(harness, "web") == everywhere
    harness.clock.advance(2)
    await harness.scheduler.expire_due()
    after = await placed(harness, "web")
    assert set(after) == set(clusters) - {"c3", "c4", "c5"}  # what came back kept its placement
    assert sum(r or 0 for r in after.values()) == 10


async def test_untolerated_work_moves_at_once_before_the_share_and_never_after_it(harness: Any) -> None:
    """Without a toleration a placement moves at its cluster's first Unreachable event, before a disruption can be
    told apart from one loss; once the share is reached nothing more moves, and on recovery what is still
    Unreachable moves at once."""
    clusters = [f"c{i}" for i in range(10)]
    for cid in clusters:
        await harness.join(cid)
    await harness.ok("subscriptions.apply", spec("web", strategy="Replicate"), ApplySubscriptionReply)
    await harness.drain()
    for cid in clusters[:8]:
        await harness.health(cid, ClusterHealth.UNREACHABLE)
    out = await harness.drain()
    removed = [c for _, s, p in out if s == "scheduler.PlacementDecided/v1" for c in p["removed_clusters"]]
    assert removed == clusters[:5]  # c5 tipped the fleet over: it and the later ones kept their placement
    assert set(await placed(harness, "web")) == set(clusters[5:])
    for cid in ("c5", "c6", "c0", "c1"):  # 8 -> 4 of 10 Unreachable: still above the 35% recovery share
        await harness.health(cid, ClusterHealth.READY)
    assert "scheduler.FleetRecovered/v1" not in schemas(await harness.drain())
    await harness.health("c2", ClusterHealth.READY)  # c3, c4, c7: 30%
    out = await harness.drain()
    assert "scheduler.FleetRecovered/v1" in schemas(out)
    removed = [c for _, s, p in out if s == "scheduler.PlacementDecided/v1" for c in p["removed_clusters"]]
    assert removed == ["c7"]  # still Unreachable, held until now, untolerated: it moves at once
    assert set(await placed(harness, "web")) == {"c0", "c1", "c2", "c5", "c6", "c8", "c9"}
