"""Applied reports are the sender cluster's own: a forgery about another cluster changes nothing and is reported."""

from __future__ import annotations

from typing import Any

from flotilla_contracts import catalogue
from flotilla_contracts.v1.scheduler import AppliedState, ApplySubscriptionReply, GetSubscriptionReply
from flotilla_contracts.v1.scheduler_events import AppliedStatusReported

REFUSED = "security.MemberRefused/v1"


def spec(name: str, selector: str) -> dict[str, Any]:
    manifest = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"}}
    return {"spec": {"name": name, "manifests": [manifest], "policy": {"selector": selector}}}


def report(h: Any, cluster_id: str, subscription: str = "web", generation: int = 1) -> AppliedStatusReported:
    return AppliedStatusReported(
        command_id="c0ffee",
        cluster_id=cluster_id,
        subscription=subscription,
        generation=generation,
        state=AppliedState.FAILED,
        message="FORGED BY x",
        occurred_at=h.clock(),
    )


def from_x(subscription: str = "web") -> str:
    return catalogue.subject_for(AppliedStatusReported, cluster_id="x", subscription=subscription)


async def applied(h: Any, name: str = "web") -> dict[str, tuple[AppliedState, str]]:
    info = await h.ok("subscriptions.get", {"name": name}, GetSubscriptionReply)
    return {a.cluster_id: (a.state, a.message) for a in info.subscription.applied}


async def refusals(h: Any) -> list[tuple[str, dict[str, Any]]]:
    return [(s, p) for s, schema, p in await h.drain() if schema == REFUSED]


async def fleet_of_x_and_v(h: Any) -> None:
    await h.join("x", site="x")
    await h.join("v", site="v")
    await h.ok("subscriptions.apply", spec("web", "env=prod"), ApplySubscriptionReply)
    await h.ok("subscriptions.apply", spec("db", "site=v"), ApplySubscriptionReply)
    await h.drain()


async def test_x_reporting_for_v_changes_nothing_and_is_reported_once_per_window(harness: Any) -> None:
    await fleet_of_x_and_v(harness)
    for _ in range(3):
        await harness.feed(report(harness, "v"), subject=from_x())
    assert await applied(harness) == {"v": (AppliedState.PENDING, ""), "x": (AppliedState.PENDING, "")}
    found = await refusals(harness)
    assert [(s, p["cluster_id"], p["reason"], p["refused"]) for s, p in found] == [
        ("fleet.v1.evt.security.scheduler.x.refused", "x", "subject_body_mismatch", 1)
    ]
    assert "cluster x reported for cluster v" in found[0][1]["detail"]
    assert await harness.refused() == {"subject_body_mismatch": 3}
    harness.clock.advance(61)  # the next window reports the two counted meanwhile and this one
    await harness.feed(report(harness, "v"), subject=from_x())
    assert [p["refused"] for _, p in await refusals(harness)] == [3]


async def test_x_reporting_on_a_subscription_placed_only_on_v_is_not_its_own_command(harness: Any) -> None:
    await fleet_of_x_and_v(harness)
    await harness.feed(report(harness, "x", "db"))  # subject and body agree: x speaks of itself, of db
    assert await applied(harness, "db") == {"v": (AppliedState.PENDING, "")}
    assert [(p["cluster_id"], p["reason"]) for _, p in await refusals(harness)] == [("x", "not_own_command")]
    await harness.feed(report(harness, "x", "web", generation=2))  # web is at generation 1
    assert await applied(harness) == {"v": (AppliedState.PENDING, ""), "x": (AppliedState.PENDING, "")}
    assert await harness.refused() == {"not_own_command": 2}


async def test_a_cluster_reporting_on_its_own_placement_is_recorded_and_nothing_is_refused(harness: Any) -> None:
    await fleet_of_x_and_v(harness)
    await harness.feed(report(harness, "x"))
    assert await applied(harness) == {"v": (AppliedState.PENDING, ""), "x": (AppliedState.FAILED, "FORGED BY x")}
    await harness.feed(report(harness, "x", "gone"))  # a deleted (or unknown) subscription: late, not hostile
    assert await refusals(harness) == []
    assert await harness.refused() == {}
