"""Day two, long form (`make soak`; FLOTILLA_SOAK_MINUTES, default 60; FLOTILLA_SOAK_ROLLOUT_EVERY_S, default
600; FLOTILLA_SOAK_KILL_EVERY_S, default "90,240"): a local fleet with default settings
runs for an hour, a rollout every 10 minutes (v1.30.4, then one patch higher each time), while a seeded
schedule SIGKILLs services, the sim and nats-server every few minutes. It ends with the fleet Ready, every
upgrade invariant checked from the event log, and the figures printed (and written to FLOTILLA_SOAK_REPORT
when set): kills survived, grants renewed, health transitions, events checked, peak memory per process.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections import Counter
from pathlib import Path

import pytest
from chaos_fleet import ChaosFleet, all_events, wait_ready
from rollout_invariants import check, final_states
from soak_support import admin_connection, expiries_by_cluster, roll_out, sample_memory, unhealthy_transitions

from flotilla_contracts.subjects import Service
from flotilla_contracts.v1 import upgrade_status as st

pytestmark = [pytest.mark.integration, pytest.mark.soak]
MINUTES = float(os.environ.get("FLOTILLA_SOAK_MINUTES", "60"))
ROLLOUT_EVERY_S = float(os.environ.get("FLOTILLA_SOAK_ROLLOUT_EVERY_S", "600"))
KILL_EVERY_S = tuple(float(s) for s in os.environ.get("FLOTILLA_SOAK_KILL_EVERY_S", "90,240").split(","))
CLUSTERS, NODES, MAX_CLUSTERS, MAX_UNAVAILABLE = 12, 4, 3, 1
VICTIMS = [*(s.value for s in Service), "sim", "nats-server"]


def kill(fleet: ChaosFleet, victim: str) -> None:
    if victim == "sim":
        fleet.kill_sim()
    elif victim == "nats-server":
        fleet.restart_nats()
    else:
        fleet.kill_service(Service(victim))


async def chaos(fleet: ChaosFleet, seed: int, until: float, renewals: Counter[str]) -> None:
    """Kill a seeded random victim every few minutes; before nats-server dies, keep its expiry records."""
    rng = random.Random(seed)
    while (pause := rng.uniform(*KILL_EVERY_S)) < until - time.monotonic():
        await asyncio.sleep(pause)  # sleep: a kill every few (seeded random) minutes is the soak's schedule
        victim = rng.choice(VICTIMS)
        if victim == "nats-server":
            renewals.update(await _expiries(fleet.url))
        await asyncio.to_thread(kill, fleet, victim)


async def _expiries(url: str) -> Counter[str]:
    nc, lifeline = await admin_connection(url, "soak-counter")
    try:
        return await expiries_by_cluster(nc)
    finally:
        lifeline.stop()
        await nc.close()


async def memory(fleet: ChaosFleet, peaks: dict[str, float], done: asyncio.Event) -> None:
    while not done.is_set():
        sample_memory(fleet.state, peaks)
        await asyncio.sleep(15)  # sleep: the memory sampler's period


async def test_an_hour_of_rollouts_and_kills_ends_with_the_fleet_ready_and_every_invariant_held(
    tmp_path: Path,
) -> None:
    fleet = ChaosFleet(tmp_path / ".flotilla", "long", CLUSTERS, NODES, step_s=0.5)
    started = time.monotonic()
    until = started + MINUTES * 60
    renewals: Counter[str] = Counter()
    peaks: dict[str, float] = {}
    results: list[str] = []
    fleet.up()
    try:
        await wait_ready(fleet.url, CLUSTERS, timeout_s=120)
        done = asyncio.Event()
        sampler = asyncio.create_task(memory(fleet, peaks, done))
        killer = asyncio.create_task(chaos(fleet, seed=14, until=until - ROLLOUT_EVERY_S / 2, renewals=renewals))
        patch = 4
        while time.monotonic() < until - 60:
            began = time.monotonic()
            status = await roll_out(
                fleet.url, f"v1.30.{patch}", max_clusters=MAX_CLUSTERS, max_unavailable=MAX_UNAVAILABLE,
                timeout_s=ROLLOUT_EVERY_S,
            )  # fmt: skip
            results.append(f"v1.30.{patch}: {status.rollout.state.value} in {time.monotonic() - began:.0f}s")
            assert status.rollout.state is st.RolloutState.SUCCEEDED, (results, status.failures)
            patch += 1
            # sleep: one rollout every ROLLOUT_EVERY_S is the soak's schedule
            await asyncio.sleep(max(0.0, min(began + ROLLOUT_EVERY_S, until - 60) - time.monotonic()))
        await killer
        await wait_ready(fleet.url, CLUSTERS, timeout_s=300)
        renewals.update(await _expiries(fleet.url))
        done.set()
        await sampler
        events = await all_events(fleet.url)
    finally:
        fleet.down()
    verdict = check(events, max_unavailable=MAX_UNAVAILABLE, max_clusters=MAX_CLUSTERS)
    finals = final_states(events)
    report = {
        "minutes": round((time.monotonic() - started) / 60, 1),
        "rollouts": results,
        "kills_survived": dict(fleet.kills),
        "grants_renewed": sum(renewals.values()),
        "clusters_renewed": len(renewals),
        "unreachable_or_lost_transitions": len(unhealthy_transitions(events)),
        "node_step_transitions": verdict.node_transitions,
        "events_checked": len(events),
        "invariant_violations": verdict.violations,
        "peak_rss_mib": {name: round(mib, 1) for name, mib in sorted(peaks.items())},
    }
    print("\nsoak (long):", json.dumps(report, indent=2))
    if os.environ.get("FLOTILLA_SOAK_REPORT"):
        Path(os.environ["FLOTILLA_SOAK_REPORT"]).write_text(json.dumps(report, indent=2) + "\n")  # noqa: ASYNC240
    assert not verdict.violations, verdict.violations
    assert all(state == "Uncordoned" for state, _ in finals.values()), "I10: every node ends uncordoned"
    assert results, "no rollout ran"
