"""The node-agent's Kubernetes path (drivers/kubernetes.py, kube_drain.py, kube_lease.py, heartbeats, inventory)
against a real API server with kwok nodes: cordon marks and I9, drain by eviction with real PDB 429s, DaemonSet
and mirror pods skipped, evicted pods rescheduled elsewhere by the real scheduler, the cordon held during a
drain, verify, the cluster agent's Lease between two agents (real resourceVersion conflicts), and the inventory
and heartbeat reports read from real Node objects.

One control plane serves the module (startup ~4 s); each test makes its own kwok nodes (label
`flotilla.test/group`) and namespace, so tests do not meet.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from driver_support import (
    Phases,
    add_nodes,
    daemonset,
    deployment,
    mirror_pod,
    namespace,
    node,
    pdb,
    pods,
    running_on,
)
from kube_support import ControlPlane, control_plane, eventually

from flotilla_contracts.v1.agent import DrainOptions, TargetVersions
from flotilla_contracts.v1.common import NodeRole
from flotilla_contracts.v1.heartbeat import ProbeResult
from flotilla_node_agent.agent_metrics import AgentMetrics
from flotilla_node_agent.drivers.base import CORDONED_BY_ANNOTATION, StepFailed
from flotilla_node_agent.drivers.kube_drain import RECORDONED
from flotilla_node_agent.drivers.kube_lease import LEASE_NAME, KubeLeaderElection
from flotilla_node_agent.drivers.kubernetes import KubernetesDriver, api_client
from flotilla_node_agent.heartbeats import HeartbeatSender, Interval
from flotilla_runtime.logs import get_logger

pytestmark = pytest.mark.kube

ROLLOUT = "r-upgrade-130"


@pytest.fixture(scope="module")
def cp() -> Iterator[ControlPlane]:
    with control_plane(workers=1, kubelet_version="v1.36.0") as plane:
        yield plane


@pytest.fixture
async def api(cp: ControlPlane) -> AsyncIterator[Any]:
    client = await api_client(str(cp.kubeconfig))
    yield client
    await client.close()


async def kubectl(cp: ControlPlane, *args: str) -> str:
    return await asyncio.to_thread(cp.kubectl, *args)


async def apply(cp: ControlPlane, *objects: dict[str, Any]) -> None:
    await asyncio.to_thread(cp.apply, *objects)


def mark(cp: ControlPlane, name: str) -> tuple[bool, str | None]:
    """(spec.unschedulable, our annotation) as the API server has them."""
    found = node(cp, name)
    annotations = found["metadata"].get("annotations", {})
    return bool(found["spec"].get("unschedulable")), annotations.get(CORDONED_BY_ANNOTATION)


async def uncordon_by_a_tool(cp: ControlPlane, name: str) -> None:
    """Another tool makes the node schedulable and drops our mark (kubectl uncordon would keep the mark)."""
    body = {"metadata": {"annotations": {CORDONED_BY_ANNOTATION: None}}, "spec": {"unschedulable": False}}
    await kubectl(cp, "patch", "node", name, "--type=merge", "-p", json.dumps(body))


async def pods_on(cp: ControlPlane, ns: str, node_name: str, count: int, selector: str = "app=web") -> dict[str, str]:
    """Wait until `count` pods of `selector` run, all on `node_name`."""

    def placed() -> dict[str, str]:
        running = running_on(cp, ns, selector)
        return running if len(running) == count and set(running.values()) == {node_name} else {}

    result: dict[str, str] = await eventually(
        f"{count} {selector} pods Running on {node_name}", lambda: asyncio.to_thread(placed), 90
    )
    return result


async def pdb_allows(cp: ControlPlane, ns: str, allowed: int, healthy: int) -> None:
    def settled() -> bool:
        status = cp.get_json("pdb", "web", "-n", ns).get("status", {})
        return bool(status.get("disruptionsAllowed") == allowed and status.get("currentHealthy") == healthy)

    await eventually(f"PDB {ns}/web allows {allowed} of {healthy}", lambda: asyncio.to_thread(settled), 90)


# --- cordon and uncordon (I9) ---------------------------------------------------------------------------------


async def test_cordon_marks_the_node_with_the_rollout_and_uncordon_removes_only_our_mark(
    cp: ControlPlane, api: Any
) -> None:
    [name] = await add_nodes(cp, "cordon", 1)
    driver = KubernetesDriver(api, name)
    cordon = await driver.cordon(ROLLOUT)
    assert cordon.changed and not cordon.was_cordoned
    assert mark(cp, name) == (True, ROLLOUT)
    again = await driver.cordon(ROLLOUT)
    assert not again.changed and not again.was_cordoned  # ours already: a repeat changes nothing

    other = await driver.uncordon("r-another-rollout")
    assert not other.changed and ROLLOUT in other.message
    assert mark(cp, name) == (True, ROLLOUT)

    assert (await driver.uncordon(ROLLOUT)).changed
    assert mark(cp, name) == (False, None)  # the mark is gone from the object, not left as an empty value
    assert CORDONED_BY_ANNOTATION not in node(cp, name)["metadata"].get("annotations", {})


async def test_a_node_someone_else_cordoned_is_reported_and_never_uncordoned_by_us(cp: ControlPlane, api: Any) -> None:
    [name] = await add_nodes(cp, "operator", 1)
    await kubectl(cp, "cordon", name)
    driver = KubernetesDriver(api, name)
    cordon = await driver.cordon(ROLLOUT)
    assert cordon.was_cordoned and not cordon.changed
    uncordon = await driver.uncordon(ROLLOUT)
    assert not uncordon.changed and "left cordoned" in uncordon.message
    assert mark(cp, name) == (True, None)


# --- drain by eviction (I5) -----------------------------------------------------------------------------------


async def test_a_drain_blocked_by_a_pdb_times_out_naming_the_pods_and_deletes_nothing(
    cp: ControlPlane, api: Any
) -> None:
    ns = "drain-blocked"
    a, b = await add_nodes(cp, "blocked", 2)
    await kubectl(cp, "cordon", b)  # both replicas land on `a`
    await apply(cp, namespace(ns), deployment(ns, "blocked", 2), pdb(ns, 2))
    placed = await pods_on(cp, ns, a, 2)
    await pdb_allows(cp, ns, allowed=0, healthy=2)
    uids = {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods(cp, ns, "app=web")}

    metrics = AgentMetrics()
    driver = KubernetesDriver(api, a, metrics=metrics)
    await driver.cordon(ROLLOUT)
    with pytest.raises(StepFailed) as failed:
        await driver.drain(ROLLOUT, DrainOptions(timeout_s=3, eviction_retry_s=0.5), Phases())

    assert failed.value.reason == "drain_timeout"
    assert sorted(p.name for p in failed.value.blocking_pods) == sorted(placed)
    assert all("429" in p.reason for p in failed.value.blocking_pods)  # the API server's TooManyRequests
    assert all(f"{ns}/{pod}" in failed.value.message for pod in placed)
    still = {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods(cp, ns, "app=web")}
    assert still == uids, "a timed-out drain deletes nothing"
    assert running_on(cp, ns, "app=web") == placed
    # The agent's /metrics: every attempt blocked by the budget (two pods, retried), none evicted.
    assert metrics.evictions.value(result="blocked") >= 2 and metrics.evictions.value(result="evicted") == 0


async def test_a_drain_evicts_replicaset_pods_which_the_scheduler_places_on_another_node(
    cp: ControlPlane, api: Any
) -> None:
    ns = "drain-moves"
    a, b = await add_nodes(cp, "moves", 2)
    await kubectl(cp, "cordon", b)
    await apply(cp, namespace(ns), deployment(ns, "moves", 3), pdb(ns, 2), daemonset(ns, "moves"))
    before = await pods_on(cp, ns, a, 3)
    await kubectl(cp, "uncordon", b)
    await apply(cp, mirror_pod(ns, a))
    await eventually(
        "a DaemonSet pod on each node",
        lambda: asyncio.to_thread(lambda: sorted(running_on(cp, ns, "app=agent").values()) == [a, b]),
    )
    await pdb_allows(cp, ns, allowed=1, healthy=3)

    driver = KubernetesDriver(api, a)
    await driver.cordon(ROLLOUT)
    phases = Phases()
    result = await driver.drain(ROLLOUT, DrainOptions(timeout_s=90, eviction_retry_s=0.3), phases)

    assert sorted(p.name for p in result.evicted) == sorted(before)
    skipped = {p.name: p.reason for p in result.skipped}
    assert skipped[f"static-{a}"] == "mirror pod"
    assert [r for r in skipped.values() if r == "DaemonSet pod"] == ["DaemonSet pod"]
    assert result.recordoned == 0 and RECORDONED not in phases.seen

    after = await eventually(
        "3 new web pods Running", lambda: asyncio.to_thread(lambda: len(running_on(cp, ns, "app=web")) == 3), 90
    )
    assert after
    moved = running_on(cp, ns, "app=web")
    assert not set(moved) & set(before), "the evicted pods are gone, new ones replaced them"
    assert set(moved.values()) == {b}, f"the scheduler kept the new pods off the cordoned node: {moved}"
    assert f"static-{a}" in {p["metadata"]["name"] for p in pods(cp, ns, "!app")}  # mirror pod untouched
    assert a in running_on(cp, ns, "app=agent").values()  # so is the DaemonSet's pod


async def test_a_drain_cordons_again_a_node_made_schedulable_while_it_drains(cp: ControlPlane, api: Any) -> None:
    ns = "drain-recordon"
    a, b = await add_nodes(cp, "recordon", 2)
    await kubectl(cp, "cordon", b)
    await apply(cp, namespace(ns), deployment(ns, "recordon", 2), pdb(ns, 2))
    before = await pods_on(cp, ns, a, 2)
    await kubectl(cp, "uncordon", b)
    await pdb_allows(cp, ns, allowed=0, healthy=2)
    driver = KubernetesDriver(api, a)
    await driver.cordon(ROLLOUT)

    async def meddle() -> None:
        # After the first round of refusals: a tool uncordons the node, and the budget is relaxed, so the next
        # evictions succeed: their replacements must not land back on `a`.
        await uncordon_by_a_tool(cp, a)
        assert mark(cp, a) == (False, None)
        await apply(cp, pdb(ns, 0))

    phases = Phases(on_first_round=meddle)
    result = await driver.drain(ROLLOUT, DrainOptions(timeout_s=90, eviction_retry_s=0.3), phases)

    assert result.recordoned == 1 and RECORDONED in phases.seen
    assert phases.seen.index(RECORDONED) < len(phases.seen) - 1  # said before the evictions that followed
    assert sorted(p.name for p in result.evicted) == sorted(before)
    assert mark(cp, a) == (True, ROLLOUT)
    await eventually(
        "2 new web pods Running", lambda: asyncio.to_thread(lambda: len(running_on(cp, ns, "app=web")) == 2), 90
    )
    assert set(running_on(cp, ns, "app=web").values()) == {b}
    assert (await driver.uncordon(ROLLOUT)).changed  # our cordon again, so ours to undo


async def test_a_resumed_drain_on_a_schedulable_node_cordons_it_with_our_mark_first(cp: ControlPlane, api: Any) -> None:
    [name] = await add_nodes(cp, "resumed", 1)
    phases = Phases()
    result = await KubernetesDriver(api, name).drain(ROLLOUT, DrainOptions(timeout_s=10), phases)
    assert result.recordoned == 1 and phases.seen[0] == RECORDONED
    assert mark(cp, name) == (True, ROLLOUT)


async def test_a_cordon_someone_else_puts_on_mid_drain_is_left_as_it_is(cp: ControlPlane, api: Any) -> None:
    ns = "drain-theirs"
    a, b = await add_nodes(cp, "theirs", 2)
    await kubectl(cp, "cordon", b)
    await apply(cp, namespace(ns), deployment(ns, "theirs", 1), pdb(ns, 1))
    await pods_on(cp, ns, a, 1)
    await kubectl(cp, "uncordon", b)
    await pdb_allows(cp, ns, allowed=0, healthy=1)
    driver = KubernetesDriver(api, a)
    await driver.cordon(ROLLOUT)

    async def take_over() -> None:
        await uncordon_by_a_tool(cp, a)
        await kubectl(cp, "cordon", a)  # an operator's cordon, without our mark
        await apply(cp, pdb(ns, 0))

    phases = Phases(on_first_round=take_over)
    result = await driver.drain(ROLLOUT, DrainOptions(timeout_s=90, eviction_retry_s=0.3), phases)
    assert result.recordoned == 0 and RECORDONED not in phases.seen
    assert mark(cp, a) == (True, None)
    assert not (await driver.uncordon(ROLLOUT)).changed  # theirs: never undone by us (I9)
    assert mark(cp, a) == (True, None)


# --- verify ---------------------------------------------------------------------------------------------------


async def test_verify_passes_at_the_target_kubelet_and_times_out_at_another(cp: ControlPlane, api: Any) -> None:
    [name] = await add_nodes(cp, "verify", 1)
    status = {"status": {"nodeInfo": {"kubeletVersion": "v1.37.2"}}}
    await kubectl(cp, "patch", "node", name, "--subresource=status", "--type=merge", "-p", json.dumps(status))
    driver = KubernetesDriver(api, name, poll_s=0.2)
    assert await driver.verify(TargetVersions(kubernetes_version="v1.37.2"), timeout_s=30) == "v1.37.2"
    with pytest.raises(StepFailed) as failed:
        await driver.verify(TargetVersions(kubernetes_version="v1.38.0"), timeout_s=1.5)
    assert failed.value.reason == "verify_timeout"
    assert "Ready at v1.37.2" in failed.value.message and "v1.38.0" in failed.value.message


# --- the cluster agent's Lease --------------------------------------------------------------------------------


def lease(cp: ControlPlane, ns: str) -> dict[str, Any]:
    found: dict[str, Any] = cp.get_json("lease", LEASE_NAME, "-n", ns)
    return found


async def test_two_agents_racing_for_the_lease_one_wins_the_other_gets_a_conflict(cp: ControlPlane, api: Any) -> None:
    ns = "lease-race"
    await apply(cp, namespace(ns))
    stale = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    await apply(
        cp,
        {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": LEASE_NAME, "namespace": ns},
            "spec": {"holderIdentity": "gone", "leaseDurationSeconds": 5, "renewTime": stale, "leaseTransitions": 3},
        },
    )
    other = await api_client(str(cp.kubeconfig))
    try:
        agents = [KubeLeaderElection(api, ns, "node-a", lease_s=5), KubeLeaderElection(other, ns, "node-b", lease_s=5)]
        both_read = asyncio.Barrier(2)
        conflicts: list[int] = []
        for agent in agents:
            read, replace = agent.coordination.read_namespaced_lease, agent.coordination.replace_namespaced_lease

            async def read_then_wait(*args: Any, _read: Any = read, **kwargs: Any) -> Any:
                found = await _read(*args, **kwargs)
                await both_read.wait()  # both see the same expired lease and resourceVersion
                return found

            async def replace_seen(*args: Any, _replace: Any = replace, **kwargs: Any) -> Any:
                try:
                    return await _replace(*args, **kwargs)
                except Exception as exc:
                    conflicts.append(int(getattr(exc, "status", 0)))
                    raise

            agent.coordination.read_namespaced_lease = read_then_wait  # type: ignore[method-assign]
            agent.coordination.replace_namespaced_lease = replace_seen  # type: ignore[method-assign]
        won = await asyncio.gather(*(agent.try_acquire() for agent in agents))
    finally:
        await other.close()
    assert sorted(won) == [False, True]
    assert conflicts == [409], "the loser's replace carried the old resourceVersion"
    winner = ["node-a", "node-b"][won.index(True)]
    spec = lease(cp, ns)["spec"]
    assert spec["holderIdentity"] == winner and spec["leaseTransitions"] == 4


async def test_the_lease_passes_to_the_other_agent_when_the_holder_stops_renewing(cp: ControlPlane, api: Any) -> None:
    ns = "lease-expiry"
    await apply(cp, namespace(ns))
    holder, waiting = KubeLeaderElection(api, ns, "node-a", lease_s=2), KubeLeaderElection(api, ns, "node-b", lease_s=2)
    assert await holder.try_acquire()
    assert not await waiting.try_acquire() and waiting.trouble == ""
    first = lease(cp, ns)["spec"]
    assert first["holderIdentity"] == "node-a" and first.get("leaseTransitions", 0) == 0
    # node-a stops renewing; node-b keeps asking until the lease has expired.
    assert await eventually("node-b takes the expired lease", waiting.try_acquire, 30, every_s=0.5)
    taken = lease(cp, ns)["spec"]
    assert taken["holderIdentity"] == "node-b" and taken["leaseTransitions"] == 1
    assert taken["acquireTime"] > first["acquireTime"]
    assert not await holder.try_acquire()  # the old holder sees it is no longer its own


async def test_a_renewal_keeps_the_acquire_time_and_writes_whole_seconds_the_server_accepts(
    cp: ControlPlane, api: Any
) -> None:
    ns = "lease-renew"
    await apply(cp, namespace(ns))
    now = [datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)]  # microsecond 0: isoformat() would drop the fraction
    agent = KubeLeaderElection(api, ns, "node-a", lease_s=3600, clock=lambda: now[0])
    assert await agent.try_acquire(), agent.trouble
    now[0] += timedelta(seconds=7)
    assert await agent.try_acquire(), agent.trouble
    spec = lease(cp, ns)["spec"]
    assert spec["acquireTime"] == "2031-05-06T07:08:09.000000Z"
    assert spec["renewTime"] == "2031-05-06T07:08:16.000000Z"
    assert spec.get("leaseTransitions", 0) == 0


# --- inventory and heartbeat reports --------------------------------------------------------------------------


async def test_heartbeat_of_the_control_plane_node_probes_its_api_server(cp: ControlPlane, api: Any) -> None:
    log = get_logger("test")
    control = HeartbeatSender(None, KubernetesDriver(api, "kwok-cp-0"), "c1", "kwok-cp-0", Interval(5), log)  # type: ignore[arg-type]
    beat = await control.build()
    assert beat.role is NodeRole.CONTROL_PLANE and beat.kubelet_version == "v1.36.0"
    assert beat.api_server is not None
    assert (beat.api_server.livez, beat.api_server.readyz) == (ProbeResult.OK, ProbeResult.OK)
    assert beat.api_server.version == "v1.37.2"
    worker = HeartbeatSender(None, KubernetesDriver(api, "kwok-worker-1"), "c1", "kwok-worker-1", Interval(5), log)  # type: ignore[arg-type]
    assert (await worker.build()).api_server is None
