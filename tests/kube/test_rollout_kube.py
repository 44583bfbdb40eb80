"""The main job on real API servers: two member clusters are real control planes with kwok nodes (1 control
plane + 3 workers each, `flotilla kube up`), their node-agents use the Kubernetes driver as the shipped
ServiceAccount, a placed workload with a PodDisruptionBudget runs on both, and a rollout to v1.37.2 cordons,
drains by eviction, upgrades (the script executor moves the kwok Node's kubelet version), verifies and
uncordons every node. DESIGN.md I1, I2, I5 and I9 are checked twice: from the fleet's event log and from what
the API servers themselves recorded (their audit logs and their final state)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections import defaultdict
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import pytest
from integration_support import fleet_events
from kube_support import eventually
from rollout_invariants import check, final_states

from flotilla_client import runfile
from flotilla_client.client import FlotillaClient
from flotilla_client.kubeworld import launch
from flotilla_client.kubeworld.samples import WEB_SUBSCRIPTION, kubectl_json, web_settled
from flotilla_client.natsserver import free_port
from flotilla_contracts.subjects import Service
from flotilla_contracts.v1 import heartbeat as hb
from flotilla_contracts.v1 import upgrade as up
from flotilla_contracts.v1 import upgrade_status as st
from flotilla_contracts.v1.agent import DrainOptions
from flotilla_runtime import logins

pytestmark = [pytest.mark.kube, pytest.mark.integration, pytest.mark.timeout(900)]
REPO = Path(__file__).resolve().parents[2]
FLOTILLA = str(Path(sys.executable).parent / "flotilla")
START, TARGET = "v1.36.3", "v1.37.2"
CLUSTERS, WORKERS = 2, 3
CORDON_MARK = "flotilla.dev/cordoned-by"
FINISHED = (st.RolloutState.SUCCEEDED, st.RolloutState.COMPLETED_WITH_FAILURES, st.RolloutState.ABORTED)


def flotilla(state: Path, *args: str, timeout: float = 300) -> str:
    done = subprocess.run(
        [FLOTILLA, "--state-dir", str(state), *args], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


class Cluster:
    """One member cluster as the test sees it: kubectl as its admin, and its API server's audit log."""

    def __init__(self, entry: dict[str, Any]) -> None:
        self.name: str = entry["name"]
        self.nodes: list[str] = entry["nodes"]
        self.identity: str = entry["agent_identity"]
        self.kubeconfig, self.root = entry["admin_kubeconfig"], Path(entry["root"])

    def get(self, *args: str) -> Any:
        return kubectl_json(self.kubeconfig, *args)

    def audit(self) -> list[dict[str, Any]]:
        lines = (self.root / "audit.log").read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[Cluster]]]:
    state = tmp_path_factory.mktemp("kube-e2e") / ".flotilla"
    flotilla(state, "up", "--port", str(free_port()), "--monitor-port", "0")
    try:
        flotilla(state, "kube", "up", "--clusters", str(CLUSTERS), "--workers", str(WORKERS), "--version", START,
                 "--timeout", "300", timeout=420)  # fmt: skip
        world = launch.load_world(state)
        assert world is not None
        subscription = state / "web.yaml"
        subscription.write_text(WEB_SUBSCRIPTION)
        flotilla(state, "subscriptions", "apply", "-f", str(subscription))
        yield runfile.server_url(state) or "", [Cluster(c) for c in world["clusters"]]
    finally:
        subprocess.run([FLOTILLA, "--state-dir", str(state), "down"], capture_output=True, timeout=180)
    assert not launch.running(state), "flotilla down left the Kubernetes world running"


async def all_events(url: str) -> list[tuple[str, str, dict[str, Any]]]:
    nc = await logins.connect(url)
    try:
        return [
            (msg.subject, (msg.headers or {}).get("Flotilla-Schema", ""), msgspec.json.decode(msg.data))
            for msg in await fleet_events(nc)
        ]
    finally:
        await nc.close()


def cordon_intervals(cluster: Cluster) -> tuple[int, list[str]]:
    """From the API server's audit log: the most nodes cordoned at once by the agents, and the node patches
    that set spec.unschedulable (in order), as `node:true|false`."""
    patches = []
    for event in cluster.audit():
        ref = event.get("objectRef") or {}
        body = event.get("requestObject") or {}
        if ref.get("resource") != "nodes" or event.get("verb") != "patch" or ref.get("subresource"):
            continue
        if (
            event.get("user", {}).get("username") != cluster.identity
            or event.get("responseStatus", {}).get("code") != 200
        ):
            continue
        unschedulable = (body.get("spec") or {}).get("unschedulable")
        if unschedulable is not None:
            patches.append((event["stageTimestamp"], ref["name"], bool(unschedulable)))
    cordoned: set[str] = set()
    most = 0
    for _when, node, flag in sorted(patches):
        (cordoned.add if flag else cordoned.discard)(node)
        most = max(most, len(cordoned))
    return most, [f"{node}:{str(flag).lower()}" for _when, node, flag in sorted(patches)]


async def test_a_rollout_on_real_api_servers_drains_by_eviction_and_keeps_the_invariants(
    world: tuple[str, list[Cluster]],
) -> None:
    url, clusters = world
    async with FlotillaClient(url) as client:

        async def fleet_ready() -> bool:
            health = await client.request(
                Service.HEARTBEAT, "health.summary", hb.FleetHealthRequest(), hb.FleetHealthReply
            )
            return health.clusters.get(hb.ClusterHealth.READY, 0) >= CLUSTERS and health.nodes.ready >= CLUSTERS * 4

        await eventually("both clusters Ready by their heartbeats", fleet_ready, 120, every_s=1.0)
        for cluster in clusters:
            await eventually(
                f"the placed workload running on {cluster.name}",
                partial(web_settled, cluster.kubeconfig),
                180,
                every_s=1.0,
            )
        before = {c.name: {p["metadata"]["uid"] for p in c.get("pods", "-n", "web")["items"]} for c in clusters}
        spec = up.RolloutSpec(
            target_version=TARGET,
            name="kube-e2e",
            waves=up.WavesSpec(canary_clusters=1, percentages=[100]),
            max_concurrent_clusters=2,
            max_unavailable=1,
            drain=DrainOptions(timeout_s=180, eviction_retry_s=1.0),
            failure_budget=up.FailureBudget(max_failed_nodes=0),
        )
        request = up.StartRolloutRequest(request_id=uuid.uuid4().hex, spec=spec)
        rollout_id = (
            await client.request(Service.UPGRADE_ORCHESTRATOR, "upgrade.start", request, up.StartRolloutReply)
        ).rollout_id

        async def finished() -> st.RolloutStatusReply | None:
            status = await client.request(
                Service.UPGRADE_ORCHESTRATOR, "upgrade.status", st.RolloutStatusRequest(rollout_id=rollout_id),
                st.RolloutStatusReply,
            )  # fmt: skip
            assert status.rollout.state is not st.RolloutState.FROZEN, (status.rollout.freeze, status.failures)
            return status if status.rollout.state in FINISHED else None

        status = await eventually(f"rollout {rollout_id} finished", finished, 600, every_s=1.0)
        assert status.rollout.state is st.RolloutState.SUCCEEDED, status.failures

    # The fleet's own record: every node went the whole way, one at a time per cluster, control plane first.
    events = await all_events(url)
    verdict = check(events, max_unavailable=1, max_clusters=2)
    assert not verdict.violations, verdict.violations  # I1, I2, I9 (and the cluster limit) from the event log
    finals = final_states(events)
    assert len(finals) == CLUSTERS * (1 + WORKERS)
    assert all(state == "Uncordoned" for state, _ in finals.values()), finals

    for cluster in clusters:
        # The API server's record: the agents' identity evicted pods and never deleted one (I5) ...
        audit = cluster.audit()
        by_agent = [e for e in audit if e.get("user", {}).get("username") == cluster.identity]
        evictions = [e for e in by_agent if (e.get("objectRef") or {}).get("subresource") == "eviction"
                     and e.get("responseStatus", {}).get("code") in (200, 201)]  # fmt: skip
        deletes = [
            e for e in by_agent if e.get("verb") == "delete" and (e.get("objectRef") or {}).get("resource") == "pods"
        ]
        assert evictions, f"{cluster.name}: no pod was evicted: the drains did nothing"
        assert not deletes, f"{cluster.name}: the agents deleted pods instead of evicting them: {deletes[:3]}"
        evicted_web = {e["objectRef"]["name"] for e in evictions if e["objectRef"].get("namespace") == "web"}
        assert evicted_web, f"{cluster.name}: the placed workload's pods were never evicted"
        # ... cordoned at most one node at a time (I1, max_unavailable 1), and uncordoned every node it cordoned (I9).
        most, patches = cordon_intervals(cluster)
        assert most == 1, f"{cluster.name}: {most} nodes cordoned at once: {patches}"
        per_node: dict[str, list[str]] = defaultdict(list)
        for patch in patches:
            node, _, flag = patch.partition(":")
            per_node[node].append(flag)
        assert set(per_node) == set(cluster.nodes), patches
        assert all(flags[-1] == "false" for flags in per_node.values()), patches
        # The end state on the API server: every node Ready at the target, schedulable, without our mark.
        for node in cluster.get("nodes")["items"]:
            name = node["metadata"]["name"]
            assert node["status"]["nodeInfo"]["kubeletVersion"] == TARGET, name
            assert not node["spec"].get("unschedulable"), f"{name} left cordoned"
            assert CORDON_MARK not in (node["metadata"].get("annotations") or {}), f"{name} keeps our mark"
        # The workload survived: three pods Running again, replaced ones among them, the budget whole.
        assert web_settled(cluster.kubeconfig), f"{cluster.name}: the workload did not recover"
        after = {p["metadata"]["uid"] for p in cluster.get("pods", "-n", "web")["items"]}
        assert after - before[cluster.name], f"{cluster.name}: no web pod was replaced"
