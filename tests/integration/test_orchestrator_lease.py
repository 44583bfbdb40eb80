"""Rollout leases (I6) on a real JetStream KV bucket: one writer, takeover only after expiry, rising epochs."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.client import Client

from flotilla_upgrade_orchestrator.lease import KvLeases

pytestmark = pytest.mark.integration


class Clock:
    """Both clocks a replica reads, moved by the test: how long a step takes on a busy machine does not matter."""

    def __init__(self) -> None:
        self.elapsed = 0.0

    def wall(self) -> float:
        return 1_800_000_000.0 + self.elapsed

    def monotonic(self) -> float:
        return 5_000.0 + self.elapsed


async def test_one_writer_per_rollout_and_epochs_only_rise(nc: Client) -> None:
    js = nc.jetstream()
    clock = Clock()
    a = KvLeases(bucket="leases_test", owner="replica-a", ttl_s=1.0, wall=clock.wall, monotonic=clock.monotonic)
    b = KvLeases(bucket="leases_test", owner="replica-b", ttl_s=1.0, wall=clock.wall, monotonic=clock.monotonic)
    await a.provision(js)
    await b.provision(js)  # idempotent: the bucket exists
    assert await a.claim("r1") == 1
    assert await b.claim("r1") is None  # held and not expired
    assert a.epoch("r1") == 1 and b.epoch("r1") is None
    assert await a.claim("r1") == 1  # renewal keeps the epoch
    clock.elapsed += 0.85  # a stops renewing (e.g. it hangs)
    assert a.epoch("r1") is None  # a stops issuing on its own (80% of the TTL) before anyone can take over
    assert await b.claim("r1") is None  # not expired yet
    clock.elapsed += 0.25
    assert await b.claim("r1") == 2  # takeover writes a higher epoch
    assert await a.claim("r1") is None  # a lost it: it must not issue any more
    assert a.epoch("r1") is None and b.epoch("r1") == 2
    restarted = KvLeases(  # same instance id, new process
        bucket="leases_test", owner="replica-b", ttl_s=1.0, wall=clock.wall, monotonic=clock.monotonic
    )
    await restarted.provision(js)
    assert await restarted.claim("r1", at_least=5) == 6  # never below what the store already saw
    await restarted.release("r1")
    assert await a.claim("r1") == 7  # released: taken at once, epoch still rising


async def test_racing_claims_have_one_winner(nc: Client) -> None:
    js = nc.jetstream()
    replicas = [KvLeases(bucket="leases_race", owner=f"r{i}", ttl_s=5.0) for i in range(5)]
    for replica in replicas:
        await replica.provision(js)
    results = await asyncio.gather(*(replica.claim("r9") for replica in replicas))
    assert sum(1 for r in results if r is not None) == 1


async def test_a_twin_with_our_instance_id_wins_once_and_is_not_taken_back(nc: Client) -> None:
    """Two live processes with one fixed instance id: the newer takes the lease at once (a restart looks the
    same); the older learns it lost at its next renewal and waits for expiry instead of taking it back."""
    js = nc.jetstream()
    clock = Clock()
    old = KvLeases(bucket="leases_twin", owner="fixed", ttl_s=1.0, wall=clock.wall, monotonic=clock.monotonic)
    new = KvLeases(bucket="leases_twin", owner="fixed", ttl_s=1.0, wall=clock.wall, monotonic=clock.monotonic)
    await old.provision(js)
    await new.provision(js)
    assert await old.claim("r1") == 1
    assert await new.claim("r1") == 2  # same instance id, another process: taken at once
    assert await old.claim("r1") is None  # the renewal sees epoch 2 of another process: lost
    assert old.epoch("r1") is None
    assert await old.claim("r1") is None  # and it does not take it straight back (no ping-pong)
    assert await new.claim("r1") == 2  # the newer keeps renewing
    clock.elapsed += 1.1  # the newer dies: only expiry gives the lease back
    assert await old.claim("r1") == 3
