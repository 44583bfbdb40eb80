"""Scheduler benchmark: placement decisions/s for 10,000 subscriptions over 5,000 clusters, and re-placement
latency after a cluster loss through the service's own path (read-model handler, SQLite, outbox), after applying
the subscriptions as the batch command does (works of 100 specs, 500 a batch; the process's CPU per apply).

Run: `.venv/bin/pytest -m bench -s tests/bench/bench_scheduler.py`. Sizes: BENCH_SCHED_CLUSTERS (5000),
BENCH_SCHED_SUBSCRIPTIONS (10000). The mix: half Replicate to at most 3 clusters of a region and tier
(spread over zones), 30% Divide 12 replicas over at most 4 clusters of a tier (spread over regions, 1-6
each), 20% Replicate to every cluster of a rack (~10). Aims (issue 7): 5,000 decisions/s; re-placing
what a lost cluster carried in under 1 s. It prints figures; assertions are about correctness only.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import pytest

from flotilla_contracts.v1.heartbeat import ClusterHealth, ClusterHealthChanged, NodeCounts
from flotilla_contracts.v1.registration import ApprovalSource, ClusterIdentity, ClusterInfo, ClusterState
from flotilla_contracts.v1.registration_events import ClusterApproved
from flotilla_contracts.v1.scheduler import MAX_APPLY_BATCH, ApplyResult, PlacementPolicy, Strategy, SubscriptionSpec
from flotilla_runtime.consumers import EventMeta
from flotilla_runtime.migrations import load_migrations
from flotilla_runtime.store import Store, SyncTx
from flotilla_scheduler import subscriptions
from flotilla_scheduler.fleet import ClusterView, Fleet
from flotilla_scheduler.handlers import SPECS_PER_WORK, Scheduler
from flotilla_scheduler.placement import compile_policy, place
from flotilla_scheduler.readmodel import ReadModel

pytestmark = pytest.mark.bench

CLUSTERS = int(os.environ.get("BENCH_SCHED_CLUSTERS", "5000"))
SUBSCRIPTIONS = int(os.environ.get("BENCH_SCHED_SUBSCRIPTIONS", "10000"))
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
MANIFEST = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "app"}, "spec": {"replicas": 1}}


def labels(i: int) -> dict[str, str]:
    return {
        "region": f"r{i % 10}",
        "tier": f"t{(i // 10) % 5}",
        "zone": f"z{(i // 50) % 3}",
        "rack": f"k{(i // 150) % 10}",
    }


def policy(j: int, rng: random.Random) -> PlacementPolicy:
    kind = j % 10
    region, tier, rack = f"r{rng.randrange(10)}", f"t{rng.randrange(5)}", f"k{rng.randrange(10)}"
    if kind < 5:
        return PlacementPolicy(selector=f"region={region},tier={tier}", max_clusters=3, spread_topology_key="zone")
    if kind < 8:
        return PlacementPolicy(
            selector=f"tier={tier}", strategy=Strategy.DIVIDE, replicas=12, max_clusters=4,
            spread_topology_key="region", min_replicas_per_cluster=1, max_replicas_per_cluster=6,
        )  # fmt: skip
    return PlacementPolicy(selector=f"region={region},tier={tier},rack={rack}")


def test_placement_decisions_per_second() -> None:
    rng = random.Random(7)
    fleet = Fleet(ClusterView(cluster_id=f"c{i:05d}", labels=labels(i)) for i in range(CLUSTERS))
    compiled = [compile_policy(policy(j, rng)) for j in range(SUBSCRIPTIONS)]
    start = time.perf_counter()
    first = [place(c, fleet, {}, NOW) for c in compiled]
    fresh_s = time.perf_counter() - start
    start = time.perf_counter()
    again = [place(c, fleet, d.placements, NOW) for c, d in zip(compiled, first, strict=True)]
    steady_s = time.perf_counter() - start
    assert not any(d.changed for d in again)
    placed = sum(len(d.placements) for d in first)
    # One cluster lost: only the subscriptions on it move, and only its share.
    lost = max(fleet.clusters, key=lambda c: sum(c in d.placements for d in first))
    fleet.remove(lost)
    affected = [i for i, d in enumerate(first) if lost in d.placements]
    start = time.perf_counter()
    moved = [place(compiled[i], fleet, first[i].placements, NOW) for i in affected]
    loss_s = time.perf_counter() - start
    assert all(d.removed == [lost] for d in moved)
    print(
        f"\nplacement: {SUBSCRIPTIONS} subscriptions over {CLUSTERS} clusters, {placed} placements\n"
        f"  fresh:  {SUBSCRIPTIONS / fresh_s:,.0f} decisions/s ({fresh_s:.2f} s)\n"
        f"  steady: {SUBSCRIPTIONS / steady_s:,.0f} decisions/s ({steady_s:.2f} s, nothing moved)\n"
        f"  loss of {lost}: {len(affected)} subscriptions re-placed in {loss_s * 1000:.1f} ms (domain only)"
    )


def cluster_info(i: int) -> ClusterInfo:
    cid = f"c{i:05d}"
    return ClusterInfo(
        cluster_id=cid, identity=ClusterIdentity(uid=f"u{i}", name=f"c{i:05d}", kubernetes_version="v1.30.4"),
        state=ClusterState.APPROVED, labels=labels(i), joined_at=NOW, updated_at=NOW,
    )  # fmt: skip


async def test_replacement_latency_after_a_cluster_loss(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "scheduler.db", load_migrations("flotilla_scheduler", "scheduler"))
    try:
        scheduler = Scheduler.create(store, lambda: NOW)
        await scheduler.load()
        read_model = ReadModel(scheduler.engine)
        on_cluster = read_model.handlers()[ClusterApproved]
        start = time.perf_counter()
        async with store.transaction() as tx:
            for i in range(CLUSTERS):
                event = ClusterApproved(cluster=cluster_info(i), approved_by=ApprovalSource.ADMIN, occurred_at=NOW)
                await on_cluster(event, tx, EventMeta("bench", f"j{i}", i, {}))
        joined_s = time.perf_counter() - start
        rng = random.Random(7)
        start = time.perf_counter()
        specs = [
            SubscriptionSpec(name=f"s{j:05d}", manifests=[MANIFEST], policy=policy(j, rng))
            for j in range(SUBSCRIPTIONS)
        ]

        def applying(chunk: list[SubscriptionSpec | ApplyResult]) -> Callable[[SyncTx], object]:
            return partial(subscriptions.apply_each, scheduler.engine, chunk=chunk)

        cpu = time.process_time()
        for batch in range(0, SUBSCRIPTIONS, MAX_APPLY_BATCH):  # as the service takes a batch: works of 100 specs
            checked: list[SubscriptionSpec | ApplyResult] = [
                subscriptions.checked(spec) for spec in specs[batch : batch + MAX_APPLY_BATCH]
            ]
            chunks = [checked[i : i + SPECS_PER_WORK] for i in range(0, len(checked), SPECS_PER_WORK)]
            await asyncio.gather(*(scheduler.run(applying(chunk)) for chunk in chunks))
        applied_s = time.perf_counter() - start
        cpu_us = (time.process_time() - cpu) / SUBSCRIPTIONS * 1e6
        engine = scheduler.engine
        lost = max(engine.placed_on, key=lambda c: len(engine.placed_on[c]))
        carried = len(engine.placed_on[lost])
        async with store.transaction() as tx:
            await tx.execute("DELETE FROM outbox")
        event = ClusterHealthChanged(
            cluster_id=lost,
            to=ClusterHealth.UNREACHABLE,
            reason="bench",
            nodes=NodeCounts(unreachable=1),
            occurred_at=NOW,
        )
        start = time.perf_counter()
        async with store.transaction() as tx:
            await read_model.handlers()[ClusterHealthChanged](event, tx, EventMeta("bench", "lost", 0, {}))
        loss_s = time.perf_counter() - start
        assert not engine.placed_on[lost]
        outbox = await store.outbox_size()
        print(
            f"\nservice path (group-committed works, SQLite, outbox; no NATS): {CLUSTERS} clusters joined in "
            f"{joined_s:.2f} s; "
            f"{SUBSCRIPTIONS} subscriptions applied as the batch command's works in {applied_s:.2f} s "
            f"({SUBSCRIPTIONS / applied_s:,.0f}/s, {cpu_us:,.0f} µs of CPU each; load {os.getloadavg()[0]:.2f})\n"
            f"  loss of {lost} (carried {carried} subscriptions): re-placed and committed in {loss_s * 1000:.0f} ms, "
            f"{outbox} events and agent commands queued"
        )
    finally:
        await store.close()
