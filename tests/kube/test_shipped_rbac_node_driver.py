"""The node-agent's shipped RBAC (deploy/services/node-agent) on a real API server (issue 16 item 5): its node
driver, with a real token of the `node-agent` ServiceAccount (TokenRequest), reads node facts, cordons, drains by
eviction (and the force delete a plan may allow), uncordons and probes the API server; discovery and the probes are
open to it through the bootstrap roles. The cluster agent's part: test_shipped_rbac_cluster_agent.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from driver_support import GROUP, deployment, node, pdb
from kube_support import ControlPlane, wait_until
from rbac_support import call_as
from shipped_rbac_support import Shipped, node_agent_api

from flotilla_contracts.v1.agent import DrainOptions, StepProgress
from flotilla_contracts.v1.heartbeat import ProbeResult
from flotilla_node_agent.drivers.base import CORDONED_BY_ANNOTATION
from flotilla_node_agent.drivers.kubernetes import KubernetesDriver, list_node_facts

pytestmark = pytest.mark.kube

WORKLOADS = "shop"  # pods the drain meets
NODE = "kwok-worker-1"


def pods_on_node(cp: ControlPlane) -> list[dict[str, Any]]:
    pods = cp.get_json("pods", "-A", "--field-selector", f"spec.nodeName={NODE}")["items"]
    return [p for p in pods if p["status"].get("phase") == "Running"]


def pdb_blocks(cp: ControlPlane) -> bool:
    status = cp.get_json("pdb", "web", "-n", WORKLOADS).get("status", {})
    return bool(status.get("currentHealthy") == 2 and status.get("disruptionsAllowed") == 0)


async def test_node_driver_cordons_drains_and_uncordons_as_the_service_account(shipped: Shipped) -> None:
    cp = shipped.cp
    cp.kubectl("create", "namespace", WORKLOADS)
    cp.kubectl("label", "node", NODE, f"{GROUP}={WORKLOADS}")  # the workloads' pods go to NODE only
    cp.apply(deployment(WORKLOADS, WORKLOADS, 2, app="api"), deployment(WORKLOADS, WORKLOADS, 2), pdb(WORKLOADS, 2))

    def ready() -> bool:
        owners = [p["metadata"]["ownerReferences"][0]["kind"] for p in pods_on_node(cp)]
        return owners.count("ReplicaSet") == 4 and "DaemonSet" in owners  # the node-agent's own pod too

    wait_until(f"4 workload pods and the node-agent pod Running on {NODE}", ready, cp.components, 120)
    wait_until("the web PDB allows no disruption", lambda: pdb_blocks(cp), cp.components, 90)
    before = {p["metadata"]["uid"] for p in pods_on_node(cp) if p["metadata"]["namespace"] == WORKLOADS}

    async with node_agent_api(shipped) as api:
        driver = KubernetesDriver(api, NODE, poll_s=0.2)
        facts = await driver.facts()
        assert facts.node_name == NODE and facts.kubelet_version == "v1.36.0" and not facts.unschedulable
        assert {f.node_name for f in await list_node_facts(api)} == {"kwok-cp-0", "kwok-worker-1", "kwok-worker-2"}

        cordoned = await driver.cordon("rollout-7")  # patch nodes
        assert cordoned.changed
        seen = node(cp, NODE)
        assert seen["spec"]["unschedulable"] is True
        assert seen["metadata"]["annotations"][CORDONED_BY_ANNOTATION] == "rollout-7"

        progress: list[StepProgress] = []

        async def record(step: StepProgress) -> None:
            progress.append(step)

        # api: evicted (pods/eviction create, pods get until gone); web: its PDB refuses (429, which is past
        # authorization) until the timeout, then the plan's force delete (pods delete).
        options = DrainOptions(timeout_s=6, eviction_retry_s=0.5, force_delete_on_timeout=True)
        result = await driver.drain("rollout-7", options, record)
        assert {r.namespace for r in result.evicted} == {WORKLOADS} and len(result.evicted) == 4
        forced = [r for r in result.evicted if "deleted at the drain timeout" in r.reason]
        assert sorted(r.name.rsplit("-", 2)[0] for r in forced) == ["web", "web"]
        assert [r.reason for r in result.skipped] == ["DaemonSet pod"]
        assert progress and progress[-1].pods_total == 4

        uncordoned = await driver.uncordon("rollout-7")  # patch nodes
        assert uncordoned.changed
        assert not node(cp, NODE)["spec"].get("unschedulable")

    def drained() -> bool:
        now = {p["metadata"]["uid"] for p in cp.get_json("pods", "-n", WORKLOADS)["items"]}
        return not (now & before)

    wait_until("the drained pods gone", drained, cp.components, 60)


def test_api_server_probes_and_discovery_are_open_to_the_service_account(shipped: Shipped) -> None:
    """The probes (/livez, /readyz, /version) and discovery come from the bootstrap roles every authenticated
    client has (system:public-info-viewer, system:discovery): rbac.yaml grants no nonResourceURLs."""
    for path in ("/livez", "/readyz", "/version", "/api", "/api/v1", "/apis", "/apis/apps/v1"):
        status, body = call_as(shipped.cp.server, shipped.token, "GET", path)
        assert status == 200, (path, body)
    assert call_as(shipped.cp.server, shipped.token, "GET", "/metrics")[0] == 403  # not everything open


async def test_node_driver_probes_the_api_server_as_the_service_account(shipped: Shipped) -> None:
    async with node_agent_api(shipped) as api:
        health = await KubernetesDriver(api, "kwok-cp-0").api_server()  # /livez, /readyz, /version
    assert health is not None
    assert (health.livez, health.readyz, health.version) == (ProbeResult.OK, ProbeResult.OK, "v1.37.2")
