"""Done means the fleet says so, after the fact: a node of an upgraded cluster that comes back at an old version
(a restarted `flotilla sim` whose journal says so) is a drift: `upgrade.VersionDriftDetected` is emitted and
`flotilla upgrade status` shows the VersionDrift failure (issue 17 item 5)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from test_rollout_e2e import all_events, flotilla

from flotilla_client import runfile
from flotilla_client.client import FlotillaClient
from flotilla_client.natsserver import free_port
from flotilla_contracts.subjects import Service
from flotilla_contracts.v1 import upgrade as up
from flotilla_contracts.v1 import upgrade_status as st
from flotilla_testkit import eventually

pytestmark = pytest.mark.integration
FLOTILLA = str(Path(sys.executable).parent / "flotilla")
UPG = Service.UPGRADE_ORCHESTRATOR
PREFIX, NODE, OLD, TARGET = "drift", "drift-0000-n02", "v1.29.6", "v1.30.4"


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    state = tmp_path / ".flotilla"
    flotilla(state, "up", "--port", str(free_port()), "--monitor-port", "0")
    try:
        flotilla(state, "sim", "--clusters", "1", "--nodes", "3", "--prefix", PREFIX, "--versions", OLD,
                 "--step-seconds", "0.05", "--timeout", "90")  # fmt: skip
        yield state, runfile.server_url(state) or ""
    finally:
        subprocess.run([FLOTILLA, "--state-dir", str(state), "down"], capture_output=True, timeout=120)


def set_kubelet(journal: Path, node: str, version: str) -> None:
    """What the restarted sim will find: its saved state of `node` with another kubelet version."""
    with sqlite3.connect(journal) as db:
        (raw,) = db.execute("SELECT state FROM sim_nodes WHERE node_name = ?", (node,)).fetchone()
        state = msgspec.json.decode(raw)
        assert state["kubelet_version"] == TARGET, state
        state["kubelet_version"] = version
        db.execute("UPDATE sim_nodes SET state = ? WHERE node_name = ?", (msgspec.json.encode(state), node))


async def wait_status(client: FlotillaClient, rollout_id: str, done: object, within_s: float) -> st.RolloutStatusReply:
    return await eventually(
        lambda: client.request(
            UPG, "upgrade.status", st.RolloutStatusRequest(rollout_id=rollout_id), st.RolloutStatusReply
        ),
        f"rollout {rollout_id} to reach the state the test waits for",
        timeout_s=within_s,
        every_s=0.5,
        until=done,  # type: ignore[arg-type]
    )


async def test_a_node_back_at_an_old_version_after_a_sim_restart_is_a_drift(fleet: tuple[Path, str]) -> None:
    state, url = fleet
    async with FlotillaClient(url) as client:
        spec = up.RolloutSpec(target_version=TARGET, max_unavailable=1)
        await eventually(  # the sim's nodes joined and the orchestrator knows them
            lambda: client.request(UPG, "upgrade.plan", up.PlanRequest(spec=spec), up.PlanReply),
            "a plan over the sim's 1 cluster and 3 nodes",
            timeout_s=60,
            every_s=0.5,
            until=lambda plan: plan.plan.clusters_total == 1 and plan.plan.nodes_total == 3,
        )
        request = up.StartRolloutRequest(request_id=uuid.uuid4().hex, spec=spec)
        rollout_id = (await client.request(UPG, "upgrade.start", request, up.StartRolloutReply)).rollout_id
        await wait_status(client, rollout_id, lambda s: s.rollout.state is st.RolloutState.SUCCEEDED, 120)

        [journal] = (state / f"sim-{PREFIX}").glob("*-journal.db")
        set_kubelet(journal, NODE, OLD)
        flotilla(state, "restart", f"sim:{PREFIX}", "--timeout", "60")

        def drifted(s: st.RolloutStatusReply) -> bool:
            return any(f.reason == "VersionDrift" for f in s.failures)

        await wait_status(client, rollout_id, drifted, 60)
    shown = flotilla(state, "upgrade", "status", rollout_id)
    assert "VersionDrift" in shown and NODE in shown and f"kubelet {OLD}" in shown, shown
    drifts = [d for _, s, d in await all_events(url) if s.startswith("upgrade.VersionDriftDetected/")]
    assert [(d["node_name"], d["component"], d["reported_version"]) for d in drifts] == [(NODE, "kubelet", OLD)]
