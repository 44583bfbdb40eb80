"""`flotilla demo --kubernetes`: the main job on real API servers.

Two member clusters are real control planes (etcd, kube-apiserver, controller-manager, scheduler) with kwok
nodes, 1 control plane + 3 workers each; a node-agent per node uses the Kubernetes driver as the shipped
ServiceAccount. A placed Deployment with a PodDisruptionBudget runs on both; a rollout to v1.37.2 cordons,
drains by eviction (the budget makes each drain wait for a replacement), upgrades (kwok: the Node's kubelet
version moves), verifies and uncordons every node, control plane first.
"""

from __future__ import annotations

import time
import uuid

import click

from flotilla_client.cli import kube, local, subscriptions, upgrade
from flotilla_client.cli.common import CliContext, Failure, call, echo
from flotilla_client.cli.rollout_view import plan_text
from flotilla_client.kubeworld import launch
from flotilla_client.kubeworld.processes import bin_dir
from flotilla_client.kubeworld.samples import WEB_SUBSCRIPTION, web_settled
from flotilla_contracts.subjects import Service
from flotilla_contracts.v1 import upgrade as up
from flotilla_contracts.v1.agent import DrainOptions

START, TARGET = "v1.36.3", "v1.37.2"
CLUSTERS, WORKERS = 2, 3


def _spec() -> up.RolloutSpec:
    return up.RolloutSpec(
        target_version=TARGET,
        name="kube-demo-to-1.37.2",
        waves=up.WavesSpec(canary_clusters=1, percentages=[100]),
        max_concurrent_clusters=2,
        max_unavailable=1,
        drain=DrainOptions(timeout_s=300, eviction_retry_s=1.0),
        failure_budget=up.FailureBudget(max_failed_nodes=0, max_failed_clusters=0),
    )


def _wait_workload(obj: CliContext, timeout_s: float = 180.0) -> None:
    world = launch.load_world(obj.state_dir)
    if world is None:
        raise Failure("the Kubernetes world is not running; see `flotilla logs` and .flotilla/logs/kube-world.log")
    deadline = time.monotonic() + timeout_s
    for cluster in world["clusters"]:
        while not web_settled(cluster["admin_kubeconfig"]):
            if time.monotonic() > deadline:
                raise Failure(
                    f"the placed workload does not run on {cluster['name']}; see `flotilla subscriptions get web`"
                )
            time.sleep(1.0)
        echo(f"  {cluster['name']}: 3 web pods Running, the budget allows 1 disruption")


def kube_demo(ctx: click.Context) -> int:
    """The steps of the demo; returns the rollout watch's exit code."""
    from flotilla_client.cli.demo import _banner, _fresh_state, _wait_healthy

    obj: CliContext = ctx.obj
    _banner("1/5 a local fleet: nats-server and five services, each its own process")
    _fresh_state(ctx, obj.state_dir)
    ctx.invoke(local.up)
    _banner(f"2/5 {CLUSTERS} real control planes with kwok nodes (1 + {WORKERS} each) at {START} join the fleet")
    ctx.invoke(kube.up, clusters=CLUSTERS, workers=WORKERS, version=START, prefix="kube", agent_identity="shipped",
               timeout=300.0)  # fmt: skip
    _wait_healthy(obj, CLUSTERS, CLUSTERS * (1 + WORKERS), timeout_s=120.0)
    _banner("3/5 a placed workload: a Deployment of 3 with a PodDisruptionBudget (minAvailable 2) on both")
    path = obj.state_dir / "web-subscription.yaml"
    path.write_text(WEB_SUBSCRIPTION)
    ctx.invoke(subscriptions.subscriptions_apply, paths=(path,))
    _wait_workload(obj)
    _banner(f"4/5 the plan to {TARGET}: control plane first, one node at a time per cluster")
    plan = call(obj, Service.UPGRADE_ORCHESTRATOR, "upgrade.plan", up.PlanRequest(spec=_spec()), up.PlanReply)
    echo(plan_text(plan.plan))
    request = up.StartRolloutRequest(request_id=uuid.uuid4().hex, spec=_spec())
    rollout_id = call(obj, Service.UPGRADE_ORCHESTRATOR, "upgrade.start", request, up.StartRolloutReply).rollout_id
    echo(f"rollout {rollout_id} started: cordon, drain by eviction, upgrade, verify, uncordon")
    code = upgrade.watch_rollout(obj, rollout_id, interval=1.0)
    _banner("5/5 look at the clusters themselves")
    world = launch.load_world(obj.state_dir) or {"clusters": []}
    for cluster in world["clusters"]:
        kubectl = f"{bin_dir() / 'kubectl'} --kubeconfig {cluster['admin_kubeconfig']}"
        echo(f"  {kubectl} get nodes            # {cluster['name']}: every node at {TARGET}")
        echo(f"  {kubectl} get pods -n web -o wide  # replaced pods on other nodes")
    for command, why in (
        (f"upgrade status {rollout_id} --nodes", "every node's steps"),
        ("kube status", "the control planes and the agents' identity"),
        ("down", "stop everything, control planes included"),
    ):
        echo(f"  {obj.hint(command):<58} {why}")
    return code
