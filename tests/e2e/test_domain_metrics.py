"""The domain metrics as an operator scrapes them: `flotilla up` and `flotilla sim` (2 clusters x 3 nodes, one node
whose upgrade fails once), each process's /metrics read over HTTP while the fleet joins, a rollout freezes on the
failure budget and succeeds after a retry, a subscription is short of clusters and a malformed event is given up.

The figures must move as the fleet does (registration's clusters by state, heartbeat's nodes and clusters by health,
the scheduler's unplaced replicas, the orchestrator's rollouts by state, frozen rollouts by reason, node step
durations and failures, dead letters by reason, the sim's size and steps), label values must be stable (no epoch,
no id), and every metric the alert rules in deploy/components/monitoring name must exist."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from flotilla_client import runfile
from flotilla_client.client import FlotillaClient
from flotilla_client.natsserver import free_port
from flotilla_contracts import catalogue
from flotilla_contracts.envelope import H_SCHEMA, schema_id
from flotilla_contracts.subjects import Service
from flotilla_contracts.v1 import scheduler as sch
from flotilla_contracts.v1 import upgrade as up
from flotilla_contracts.v1 import upgrade_status as st
from flotilla_contracts.v1.registration_events import ClusterApproved
from flotilla_runtime import logins
from flotilla_testkit import ConditionNotMet, eventually

pytestmark = pytest.mark.integration
FLOTILLA = str(Path(sys.executable).parent / "flotilla")
ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "components" / "monitoring" / "alerts.yml"
UPG = Service.UPGRADE_ORCHESTRATOR
PREFIX, CLUSTERS, NODES, TARGET = "met", 2, 3, "v1.30.4"
FAILING = "met-0001-n01"
Samples = dict[str, float]


def flotilla(state: Path, *args: str) -> str:
    done = subprocess.run([FLOTILLA, "--state-dir", str(state), *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


@dataclass
class Fleet:
    state: Path
    url: str
    ports: dict[str, int]  # process -> its /metrics port: the five services and "sim"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    state = tmp_path_factory.mktemp("metrics") / ".flotilla"
    flotilla(state, "up", "--port", str(free_port()), "--monitor-port", "0")
    try:
        sim_port = free_port()
        flotilla(state, "sim", "--clusters", str(CLUSTERS), "--nodes", str(NODES), "--prefix", PREFIX,
                 "--versions", "v1.29.6", "--step-seconds", "0.05", "--timeout", "90",
                 "--fault", f"{FAILING}=upgrade_fails_once", "--metrics-port", str(sim_port))  # fmt: skip
        info = runfile.load(state)
        assert info is not None
        ports = {s.name: s.http_port for s in info.services} | {"sim": sim_port}
        yield Fleet(state, runfile.server_url(state) or "", ports)
    finally:
        subprocess.run([FLOTILLA, "--state-dir", str(state), "down"], capture_output=True, timeout=120)


def scrape(port: int) -> tuple[Samples, set[str]]:
    """`name{labels}` -> value, and the family names (from the TYPE lines)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: Samples = {}
    families: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            families.add(line.split()[2])
        elif line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            samples[series] = float(value.replace("+Inf", "inf"))
    return samples, families


async def until(fleet: Fleet, process: str, wanted: dict[str, float], within_s: float = 90) -> Samples:
    """Scrape `process` until every series in `wanted` has its value; fails with the last scrape's domain lines."""

    async def scraped() -> Samples:
        return (await asyncio.to_thread(scrape, fleet.ports[process]))[0]

    try:
        return await eventually(
            scraped,
            f"{process}: {wanted}",
            timeout_s=within_s,
            every_s=0.3,
            until=lambda samples: all(samples.get(series, 0.0) == value for series, value in wanted.items()),
        )
    except ConditionNotMet as late:
        samples: Samples = late.last if isinstance(late.last, dict) else {}
        shown = {k: v for k, v in samples.items() if not k.startswith(("flotilla_command", "flotilla_event_"))}
        raise AssertionError(f"{process}: not reached within {within_s:.0f}s: {wanted}\n{shown}") from late


def at(samples: Samples, series: str) -> float:
    return samples.get(series, 0.0)


async def test_the_domain_figures_move_as_the_fleet_does(fleet: Fleet) -> None:
    # Joined: registration, heartbeat, scheduler and the sim agree on 2 clusters of 3 nodes.
    await until(fleet, "registration", {'flotilla_registration_clusters{state="Approved"}': 2})
    ready = {'flotilla_heartbeat_nodes{health="Ready"}': 6, 'flotilla_heartbeat_clusters{health="Ready"}': 2}
    hb = await until(fleet, "heartbeat", ready)
    assert at(hb, 'flotilla_heartbeat_nodes{health="Unreachable"}') == 0
    assert 0 <= hb["flotilla_heartbeat_lag_seconds"] < 5
    await until(fleet, "scheduler", {'flotilla_scheduler_clusters{eligible="true"}': 2})
    sim = await until(fleet, "sim", {"flotilla_sim_agents_ready": 6, "flotilla_sim_clusters_approved": 2})
    assert (sim["flotilla_sim_clusters"], sim["flotilla_sim_nodes"], sim["flotilla_sim_steps_executed_total"]) == (
        2,
        6,
        0,
    )

    async with FlotillaClient(fleet.url) as client:
        # A subscription that wants 10 replicas, at most 2 per cluster, on 2 clusters: 6 find no cluster.
        policy = sch.PlacementPolicy(strategy=sch.Strategy.DIVIDE, replicas=10, max_replicas_per_cluster=2)
        manifest = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "a"}}
        apply = sch.ApplySubscriptionRequest(
            spec=sch.SubscriptionSpec(name="short", manifests=[manifest], policy=policy)
        )
        await client.request(Service.SCHEDULER, "subscriptions.apply", apply, sch.ApplySubscriptionReply)
        placed = await until(fleet, "scheduler", {"flotilla_scheduler_unplaced_replicas": 6})
        assert at(placed, 'flotilla_scheduler_subscriptions{placement="short"}') == 1
        assert at(placed, "flotilla_scheduler_placements") == 2

        # A rollout with no failure budget: the failing upgrade freezes it, a retry finishes it.
        rollout = up.RolloutSpec(target_version=TARGET, failure_budget=up.FailureBudget(max_failed_nodes=0))
        request = up.StartRolloutRequest(request_id=uuid.uuid4().hex, spec=rollout)
        rollout_id = (await client.request(UPG, "upgrade.start", request, up.StartRolloutReply)).rollout_id
        frozen = await until(fleet, UPG.value, {'flotilla_rollouts_frozen{reason="NodeFailureBudgetExceeded"}': 1})
        assert at(frozen, 'flotilla_rollouts{state="Frozen"}') == 1
        assert at(frozen, 'flotilla_rollouts{state="Running"}') == 0
        assert at(frozen, 'flotilla_node_step_failures_total{step="upgrade",reason="upgrade_failed"}') == 1
        assert at(frozen, 'flotilla_rollout_nodes{state="Failed"}') == 1
        await client.request(UPG, "upgrade.retry", up.RetryRequest(rollout_id=rollout_id), st.RolloutReply)
        done = await until(fleet, UPG.value, {'flotilla_rollouts{state="Succeeded"}': 1})
    assert sum(v for k, v in done.items() if k.startswith("flotilla_rollouts_frozen{")) == 0
    assert sum(v for k, v in done.items() if k.startswith("flotilla_rollout_nodes{")) == 0  # a finished rollout
    for step in ("cordon", "drain", "verify", "uncordon"):
        assert at(done, f'flotilla_node_step_duration_seconds_count{{step="{step}"}}') == 6, step
    assert at(done, 'flotilla_node_step_duration_seconds_count{step="upgrade"}') == 7  # the failed one, its retry
    assert at(done, 'flotilla_node_step_duration_seconds_bucket{step="upgrade",le="+Inf"}') == 7
    upgrades = at(done, 'flotilla_node_step_duration_seconds_sum{step="upgrade"}')
    assert 7 * 0.05 <= upgrades < 7 * 30, "each step takes at least the simulated 0.05 s"
    steps, _ = await asyncio.to_thread(scrape, fleet.ports["sim"])
    assert steps["flotilla_sim_steps_executed_total"] >= 31 and steps["flotilla_sim_heartbeats_sent_total"] > 0


async def test_a_malformed_event_is_a_dead_letter_by_reason_under_stable_consumer_names(fleet: Fleet) -> None:
    nc = await logins.connect(fleet.url)
    try:
        subject = catalogue.subject_for(ClusterApproved, cluster_id="c-bogus")
        await nc.jetstream().publish(subject, b'{"cluster": 7}', headers={H_SCHEMA: schema_id(ClusterApproved)})
    finally:
        await nc.close()
    given_up = 'flotilla_events_total{consumer="%s",outcome="dead_lettered"}'
    scheduler = await until(fleet, "scheduler", {given_up % "scheduler-fleet": 1})
    assert at(scheduler, 'flotilla_dead_letters_total{consumer="scheduler-fleet",reason="invalid_field"}') == 1
    orchestrator = await until(fleet, UPG.value, {given_up % "upgrade-orchestrator-fleet": 1})
    by_reason = 'flotilla_dead_letters_total{consumer="upgrade-orchestrator-fleet"'
    assert sum(v for k, v in orchestrator.items() if k.startswith(by_reason)) == 1

    consumers: set[str] = set()
    for port in fleet.ports.values():
        samples, _ = await asyncio.to_thread(scrape, port)
        consumers |= {m for series in samples for m in re.findall(r'consumer="([^"]*)"', series)}
    stable = {"scheduler-fleet", "scheduler-applied", "heartbeat-members", "upgrade-orchestrator-fleet"}
    assert stable | {"upgrade-orchestrator-steps"} <= consumers, consumers
    assert all(re.fullmatch(r"[a-z]+(-[a-z]+)+", c) for c in consumers), f"an epoch or id in a label: {consumers}"


async def test_every_metric_an_alert_names_is_exposed(fleet: Fleet) -> None:
    exposed: set[str] = set()
    for port in fleet.ports.values():
        exposed |= (await asyncio.to_thread(scrape, port))[1]
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    named = {name for rule in rules for name in re.findall(r"\bflotilla_[a-z_]+", rule["expr"])}
    assert named and not named - exposed, f"alerts name metrics nobody exposes: {sorted(named - exposed)}"
