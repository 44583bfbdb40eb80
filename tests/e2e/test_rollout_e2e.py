"""The main job end to end: the real services, a simulated fleet with failures, a rollout checked against
every upgrade invariant from the event log (DESIGN.md I1, I2, I4, I9, I10 and the cluster concurrency limit)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from integration_support import fleet_events
from rollout_invariants import check, final_states

from flotilla_client import runfile
from flotilla_client.client import FlotillaClient
from flotilla_client.natsserver import free_port
from flotilla_contracts.subjects import Service
from flotilla_contracts.v1 import heartbeat as hb
from flotilla_contracts.v1 import registration as reg
from flotilla_contracts.v1 import upgrade as up
from flotilla_contracts.v1 import upgrade_status as st
from flotilla_runtime import logins
from flotilla_testkit import eventually

pytestmark = pytest.mark.integration
FLOTILLA = str(Path(sys.executable).parent / "flotilla")
UPG = Service.UPGRADE_ORCHESTRATOR
CLUSTERS, NODES, MAX_UNAVAILABLE, MAX_CLUSTERS = 20, 5, 2, 4
FAULTS = ["e2e-0004-n03=upgrade_fails_once", "e2e-0013-n00=upgrade_fails_once"]


def flotilla(state: Path, *args: str) -> str:
    done = subprocess.run([FLOTILLA, "--state-dir", str(state), *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    state = tmp_path_factory.mktemp("e2e") / ".flotilla"
    port = free_port()
    flotilla(state, "up", "--port", str(port), "--monitor-port", "0")
    try:
        fault_args = [arg for fault in FAULTS for arg in ("--fault", fault)]
        flotilla(state, "sim", "--clusters", str(CLUSTERS), "--nodes", str(NODES), "--prefix", "e2e",
                 "--versions", "v1.29.6,v1.30.2", "--step-seconds", "0.05", "--timeout", "90", *fault_args)  # fmt: skip
        yield state, runfile.server_url(state) or ""  # the admin URL, with its credentials
    finally:
        subprocess.run([FLOTILLA, "--state-dir", str(state), "down"], capture_output=True, timeout=120)


async def all_events(url: str) -> list[tuple[str, str, dict[str, Any]]]:
    nc = await logins.connect(url)
    try:
        return [
            (msg.subject, (msg.headers or {}).get("Flotilla-Schema", ""), msgspec.json.decode(msg.data))
            for msg in await fleet_events(nc)
        ]
    finally:
        await nc.close()


async def test_a_rollout_with_failures_keeps_every_invariant(fleet: tuple[Path, str]) -> None:
    _, url = fleet
    async with FlotillaClient(url) as client:
        await eventually(
            lambda: client.request(Service.HEARTBEAT, "health.summary", hb.FleetHealthRequest(), hb.FleetHealthReply),
            f"the simulated fleet's {CLUSTERS} clusters Ready",
            timeout_s=60,
            every_s=0.5,
            until=lambda health: health.clusters.get(hb.ClusterHealth.READY, 0) >= CLUSTERS,
        )
        spec = up.RolloutSpec(
            target_version="v1.30.4",
            waves=up.WavesSpec(canary_clusters=1, percentages=[50, 100]),
            max_concurrent_clusters=MAX_CLUSTERS,
            max_unavailable=MAX_UNAVAILABLE,
            failure_budget=up.FailureBudget(max_failed_nodes=0),
        )
        started = await client.request(
            UPG, "upgrade.start", up.StartRolloutRequest(request_id=uuid.uuid4().hex, spec=spec), up.StartRolloutReply
        )
        rollout_id, freezes, retries = started.rollout_id, 0, 0
        deadline = time.monotonic() + 240
        while True:
            status = await client.request(
                UPG, "upgrade.status", st.RolloutStatusRequest(rollout_id=rollout_id), st.RolloutStatusReply
            )
            state = status.rollout.state
            if state in (st.RolloutState.SUCCEEDED, st.RolloutState.COMPLETED_WITH_FAILURES, st.RolloutState.ABORTED):
                break
            if state is st.RolloutState.FROZEN:
                freezes += 1
                assert status.rollout.freeze is not None and status.rollout.freeze.message, "a freeze states its reason"
                await client.request(UPG, "upgrade.retry", up.RetryRequest(rollout_id=rollout_id), st.RolloutReply)
                retries += 1
            assert time.monotonic() < deadline, f"rollout stuck in {state}: {status.rollout}"
            await asyncio.sleep(0.5)  # sleep: the operator's pace between looks (each look may act: retry a freeze)
        assert status.rollout.state is st.RolloutState.SUCCEEDED, status.failures
        assert freezes >= 1, "the injected upgrade failures must trip the failure budget (I7)"

        # Done means the fleet says so: `flotilla clusters list` shows the version the API servers report.
        async def versions() -> dict[str, str]:
            listed = await client.request(
                Service.REGISTRATION, "clusters.list", reg.ListClustersRequest(limit=100), reg.ListClustersReply
            )
            return {c.identity.name: c.identity.kubernetes_version for c in listed.clusters}

        await eventually(
            versions,
            "every cluster's version to follow the fleet (v1.30.4)",
            timeout_s=60,
            every_s=0.5,
            until=lambda seen: len(seen) == CLUSTERS and set(seen.values()) == {"v1.30.4"},
        )
        changed = [d for _, s, d in await all_events(url) if s.startswith("registration.ClusterVersionChanged/")]
        assert {d["cluster"]["identity"]["kubernetes_version"] for d in changed} == {"v1.30.4"}
    events = await all_events(url)
    verdict = check(events, max_unavailable=MAX_UNAVAILABLE, max_clusters=MAX_CLUSTERS)
    assert not verdict.violations, verdict.violations
    assert verdict.max_busy_clusters >= 2, "clusters should run in parallel up to the limit"
    assert max(verdict.max_unavailable_seen.values()) == MAX_UNAVAILABLE, "workers should use the budget"
    finals = final_states(events)
    assert len(finals) == CLUSTERS * NODES
    not_done = {k: v for k, v in finals.items() if v[0] != "Uncordoned"}
    assert not not_done, f"I10: nodes not at the end state: {not_done}"
    frozen_events = [d for _, schema, d in events if schema.startswith("upgrade.RolloutFrozen/")]
    assert frozen_events and all(d["freeze"]["message"] for d in frozen_events)
