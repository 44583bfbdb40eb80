"""Day two, short form: a fleet whose bus grants expire every few seconds runs through several lifetimes and a
nats-server restart, and nothing notices: no node is ever reported Unreachable, every cluster's connections are
re-authenticated (counted from the server's own connection records), and a rollout started after the restart
completes with every upgrade invariant holding in the event log.

The long form (60 minutes, default settings, random kills) is `make soak` (tests/soak/test_soak_long.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from chaos_fleet import ChaosFleet, all_events, flotilla, wait_ready
from rollout_invariants import check, final_states
from soak_support import (
    HeartbeatWatch,
    admin_connection,
    expiries_by_cluster,
    open_clusters,
    roll_out,
    unhealthy_transitions,
)

from flotilla_contracts.v1 import upgrade_status as st
from flotilla_testkit import eventually

pytestmark = [pytest.mark.integration, pytest.mark.chaos]
CLUSTERS, NODES, LIFETIMES = 5, 3, 5
GRANT_TTL_S, HEARTBEAT_S, MISSED = 4, 1, 6  # a silent node is Unreachable after about 6 s


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosFleet]:
    settings = {
        "FLOTILLA_REGISTRATION_CALLOUT_GRANT_TTL_S": str(GRANT_TTL_S),
        "FLOTILLA_HEARTBEAT_INTERVAL_S": str(HEARTBEAT_S),
        "FLOTILLA_HEARTBEAT_MISSED_INTERVALS": str(MISSED),
    }
    with pytest.MonkeyPatch.context() as env:
        for name, value in settings.items():
            env.setenv(name, value)  # `flotilla up` hands its environment to the services it starts
        fleet = ChaosFleet(tmp_path_factory.mktemp("soak") / ".flotilla", "soak", CLUSTERS, NODES, step_s=0.05)
        try:
            fleet.up()
            yield fleet
        finally:
            fleet.down()


async def test_grants_expire_and_the_bus_restarts_and_the_fleet_never_notices(fleet: ChaosFleet) -> None:
    await wait_ready(fleet.url, CLUSTERS, timeout_s=90)
    watch = HeartbeatWatch()
    nc, observer = await admin_connection(fleet.url, "soak-observer")
    try:
        await nc.subscribe("fleet.v1.hb.>", cb=watch.on_heartbeat)
        clusters = await open_clusters(nc)
        assert len(clusters) == CLUSTERS, clusters

        async def every_cluster_renewed(times: int) -> bool:
            expired = await expiries_by_cluster(nc)
            return all(expired[c] >= times for c in clusters)

        await eventually(
            lambda: every_cluster_renewed(LIFETIMES),
            f"{LIFETIMES} grant renewals per cluster",
            timeout_s=30 * GRANT_TTL_S,
            every_s=0.5,
        )
        renewed_before_restart = sum((await expiries_by_cluster(nc)).values())
        node, gap = watch.worst()
        assert gap < MISSED * HEARTBEAT_S, f"{node} was silent {gap:.1f}s across its grant renewals"

        flotilla(fleet.state, "restart", "nats-server", "--timeout", "60")
        await eventually(
            lambda: _all_back(nc, clusters), "every cluster to reconnect after the restart", timeout_s=60, every_s=0.5
        )
        await eventually(
            lambda: every_cluster_renewed(1),
            "a grant renewal per cluster after the restart",
            timeout_s=10 * GRANT_TTL_S,
            every_s=0.5,
        )

        status = await roll_out(fleet.url, "v1.30.4", max_clusters=CLUSTERS, max_unavailable=1, timeout_s=180)
        assert status.rollout.state is st.RolloutState.SUCCEEDED, status.failures
        renewed_after_restart = sum((await expiries_by_cluster(nc)).values())
    finally:
        observer.stop()
        await nc.close()

    events = await all_events(fleet.url)
    assert not unhealthy_transitions(events), unhealthy_transitions(events)
    verdict = check(events, max_unavailable=1, max_clusters=CLUSTERS)
    assert not verdict.violations, verdict.violations
    finals = final_states(events)
    assert len(finals) == CLUSTERS * NODES and all(state == "Uncordoned" for state, _ in finals.values()), finals
    print(
        f"\nsoak: {renewed_before_restart} grant renewals before the nats-server restart, {renewed_after_restart} "
        f"after; heartbeats {watch.received}, longest silence {gap:.2f}s ({node}) before the restart; "
        f"{len(events)} events checked, {verdict.node_transitions} node step transitions, 0 Unreachable"
    )


async def _all_back(nc: object, clusters: set[str]) -> bool:
    try:
        return await open_clusters(nc) >= clusters  # type: ignore[arg-type]
    except Exception:  # the observer itself reconnecting
        return False
