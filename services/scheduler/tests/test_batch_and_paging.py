"""`subscriptions.batch.apply` (one result per spec, in order; a refused spec never fails the others) and
`subscriptions.list` one page at a time, through the commands (TestNatsBroker, real SQLite)."""

from __future__ import annotations

from typing import Any

from flotilla_contracts.v1.scheduler import (
    MAX_APPLY_BATCH,
    ApplyOutcome,
    ApplySubscriptionsReply,
    DeleteSubscriptionReply,
    GetSubscriptionReply,
    ListSubscriptionsReply,
)

AGENT = "fleet.v1.agent.{}._cluster.apply"
BATCH = "subscriptions.batch.apply"


def spec(name: str, selector: str = "env=prod", **extra: Any) -> dict[str, Any]:
    manifest = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"}}
    return {"name": name, "manifests": [manifest], "policy": {"selector": selector}, **extra}


# An override that cannot render (it removes a path the manifest lacks): refused inside the work, after the
# spec passed the checks that need no state, while it is prepared and before it writes anything.
UNRENDERABLE = [{"name": "bad", "stage": "global", "type": "JSONPatch", "json_patch": [{"op": "remove", "path": "/x"}]}]


def outcomes(reply: ApplySubscriptionsReply) -> list[tuple[str, str, int]]:
    return [(r.name, r.outcome.value, r.generation) for r in reply.results]


async def test_a_batch_answers_each_spec_in_order_and_a_refused_one_fails_no_other(harness: Any) -> None:
    await harness.join("c1")
    await harness.join("c2", env="dev")
    specs = [spec("a"), spec("b", "env in (prod"), spec("c", overrides=UNRENDERABLE), spec("d", "env=dev")]
    reply = await harness.ok(BATCH, {"specs": specs}, ApplySubscriptionsReply)
    assert outcomes(reply) == [("a", "applied", 1), ("b", "error", 0), ("c", "error", 0), ("d", "applied", 1)]
    assert [r.created for r in reply.results] == [True, False, False, True]
    errors = [r.error for r in reply.results if r.error is not None]
    assert [(e.code, e.details.get("field")) for e in errors] == [
        ("invalid_selector", "policy.selector"),
        ("invalid_field", "overrides"),
    ]
    out = await harness.drain()
    announced = [p["spec"]["name"] for _, schema, p in out if schema == "scheduler.SubscriptionApplied/v1"]
    assert announced == ["a", "d"]
    agent = sorted((s, p["subscription"]) for s, _, p in out if s.startswith("fleet.v1.agent."))
    assert agent == [(AGENT.format("c1"), "a"), (AGENT.format("c2"), "d")]
    listed = await harness.ok("subscriptions.list", {}, ListSubscriptionsReply)
    assert [s.name for s in listed.subscriptions] == ["a", "d"]

    fixed = [spec("a"), spec("b"), spec("c"), spec("d", "env=prod")]
    again = await harness.ok(BATCH, {"specs": fixed}, ApplySubscriptionsReply)
    assert outcomes(again) == [("a", "unchanged", 1), ("b", "applied", 1), ("c", "applied", 1), ("d", "applied", 2)]
    info = await harness.ok("subscriptions.get", {"name": "d"}, GetSubscriptionReply)
    assert [p.cluster_id for p in info.subscription.placements] == ["c1"]
    out = await harness.drain()
    announced = [p["spec"]["name"] for _, schema, p in out if schema == "scheduler.SubscriptionApplied/v1"]
    assert announced == ["b", "c", "d"]  # an unchanged spec announces nothing


async def test_a_batch_over_the_limit_is_refused_whole_and_says_how_to_send_it(harness: Any) -> None:
    await harness.join("c1")
    specs = [spec(f"s{i:03d}") for i in range(MAX_APPLY_BATCH + 1)]
    error = await harness.error(BATCH, {"specs": specs})
    assert (error["code"], error["details"]["field"]) == ("invalid_field", "specs")
    assert f"at most {MAX_APPLY_BATCH}" in error["message"] and "nothing was applied" in error["message"]
    assert await harness.outbox() == []
    full = await harness.ok(BATCH, {"specs": specs[:MAX_APPLY_BATCH]}, ApplySubscriptionsReply)
    assert [r.outcome for r in full.results] == [ApplyOutcome.APPLIED] * MAX_APPLY_BATCH


async def test_list_pages_by_name_with_a_cursor_and_the_total(harness: Any) -> None:
    await harness.join("c1")
    names = [f"w{i:02d}" for i in range(7)]
    await harness.ok(BATCH, {"specs": [spec(n) for n in reversed(names)]}, ApplySubscriptionsReply)
    pages: list[list[str]] = []
    cursor = ""
    while True:
        page = await harness.ok("subscriptions.list", {"limit": 3, "cursor": cursor}, ListSubscriptionsReply)
        assert page.total == 7
        assert all(s.clusters == 1 for s in page.subscriptions)
        pages.append([s.name for s in page.subscriptions])
        if not page.next_cursor:
            break
        cursor = page.next_cursor
    assert pages == [names[0:3], names[3:6], names[6:]]
    # The cursor is a name, not a position: deleting the subscription it names does not break the listing.
    await harness.ok("subscriptions.delete", {"name": "w02"}, DeleteSubscriptionReply)
    page = await harness.ok("subscriptions.list", {"limit": 3, "cursor": "w02"}, ListSubscriptionsReply)
    assert ([s.name for s in page.subscriptions], page.total, page.next_cursor) == (names[3:6], 6, "w05")


async def test_a_batch_may_change_one_subscription_several_times_and_a_refused_version_changes_nothing(
    harness: Any,
) -> None:
    """A batch writes a decision's rows in one statement per kind, with no SAVEPOINT a spec: a name applied several
    times in one batch ends as its last applied version (placed, moved and moved back, in order, in the tables
    as in memory), and a version refused in between leaves no trace."""
    await harness.join("c1")
    await harness.join("c2", env="dev")
    specs = [spec("a"), spec("a", "env=dev"), spec("a", overrides=UNRENDERABLE), spec("a", "env=prod")]
    reply = await harness.ok(BATCH, {"specs": specs}, ApplySubscriptionsReply)
    assert outcomes(reply) == [("a", "applied", 1), ("a", "applied", 2), ("a", "error", 0), ("a", "applied", 3)]
    out = await harness.drain()
    sent = [(s.split(".")[3], p["generation"], p["placed"]) for s, _, p in out if s.startswith("fleet.v1.agent.")]
    assert sent == [("c1", 1, True), ("c2", 2, True), ("c1", 2, False), ("c1", 3, True), ("c2", 3, False)]
    announced = [p["generation"] for _, schema, p in out if schema == "scheduler.SubscriptionApplied/v1"]
    assert announced == [1, 2, 3]
    await harness.restart()  # memory rebuilt from the tables alone
    info = (await harness.ok("subscriptions.get", {"name": "a"}, GetSubscriptionReply)).subscription
    assert (info.generation, [p.cluster_id for p in info.placements]) == (3, ["c1"])
    assert [(a.cluster_id, a.generation, a.state.value, a.message) for a in info.applied] == [
        ("c1", 3, "Pending", ""),
        ("c2", 3, "Pending", "removing"),
    ]
