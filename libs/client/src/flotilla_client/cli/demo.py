"""`flotilla demo`: the main job on one machine, end to end, for a person to watch.

A local fleet (nats-server and the five services, each its own process), a simulated fleet of 12
clusters x 4 nodes on mixed 1.29 and 1.30 versions with one node whose upgrade fails once, a plan,
then a rollout to v1.30.4 with a canary wave: the safety brake freezes it on the failing node, the
failed cluster is retried against the pinned target, and the rollout finishes.
"""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

import click

from flotilla_client import localfleet
from flotilla_client.cli import local, sim, upgrade
from flotilla_client.cli.common import CliContext, Failure, call, echo
from flotilla_client.cli.rollout_view import FINISHED, plan_text
from flotilla_contracts.subjects import Service
from flotilla_contracts.v1 import heartbeat as hb
from flotilla_contracts.v1 import upgrade as up
from flotilla_contracts.v1 import upgrade_status as st

MARKER = "demo.json"
TARGET = "v1.30.4"
CLUSTERS, NODES = 12, 4
FAILING_NODE = "demo-0007-n02"  # a worker outside the canary wave: its upgrade fails once


def _banner(text: str) -> None:
    echo(f"\n=== {text} " + "=" * max(3, 76 - len(text)))


def _fresh_state(ctx: click.Context, state: Path) -> None:
    """Start from nothing: stop a running fleet and remove state, but only a previous demo's."""
    if state.exists() and any(state.iterdir()) and not (state / MARKER).exists():
        raise Failure(
            f"{state} holds a fleet that is not a demo's; run the demo elsewhere "
            f"(`flotilla --state-dir /tmp/flotilla-demo demo`) or remove the folder yourself"
        )
    if localfleet.running(state):
        echo("stopping the previous demo")
        ctx.invoke(local.down)
    if state.exists():
        shutil.rmtree(state)
    state.mkdir(parents=True)
    (state / MARKER).write_text('{"demo": true}\n')


def _wait_healthy(obj: CliContext, clusters: int, nodes: int, timeout_s: float = 60.0) -> None:
    """Until every cluster and node is Ready by its heartbeats (the orchestrator plans only on known health)."""
    deadline = time.monotonic() + timeout_s
    while True:
        reply = call(obj, Service.HEARTBEAT, "health.summary", hb.FleetHealthRequest(), hb.FleetHealthReply)
        ready = reply.clusters.get(hb.ClusterHealth.READY, 0)
        if ready >= clusters and reply.nodes.ready >= nodes:
            echo(f"  heartbeats: {ready} clusters Ready, {reply.nodes.ready} nodes Ready")
            return
        if time.monotonic() > deadline:
            raise Failure(f"only {ready} of {clusters} clusters report Ready; see `flotilla health`")
        time.sleep(1.0)


def _spec() -> up.RolloutSpec:
    return up.RolloutSpec(
        target_version=TARGET,
        name="demo-to-1.30.4",
        waves=up.WavesSpec(canary_clusters=1, percentages=[50, 100]),
        max_concurrent_clusters=3,
        max_unavailable=1,
        soak_s=3.0,
        failure_budget=up.FailureBudget(max_failed_nodes=0, max_failed_clusters=0),
    )


@click.command()
@click.option(
    "--kubernetes",
    is_flag=True,
    help="Real API servers instead of the simulated fleet: 2 control planes with kwok nodes (needs `make k8s-bins`).",
)
@click.pass_context
def demo(ctx: click.Context, kubernetes: bool) -> None:
    """Run the main job end to end and show it: a fleet upgrade with canary, safety brake, retry.

    Starts a fresh local fleet in the state folder (a previous demo's state is replaced; any other
    fleet's state is left alone and the demo refuses to run there), a simulated fleet, plans and
    runs a rollout you can watch. Everything keeps running afterwards so you can look around;
    `flotilla down` (or `make down`) stops it.

    With --kubernetes the member clusters are two real control planes (etcd, kube-apiserver, controller-manager,
    scheduler) with kwok nodes; a placed Deployment with a PodDisruptionBudget runs on both, and the rollout
    really drains it by eviction.

    \b
    Examples:
      flotilla demo
      flotilla demo --kubernetes
    """
    obj: CliContext = ctx.obj
    started = time.monotonic()
    if kubernetes:
        from flotilla_client.cli.demo_kube import kube_demo

        code = kube_demo(ctx)
        echo(f"\nThe demo took {time.monotonic() - started:.0f}s.")
        if code:
            raise SystemExit(code)
        return
    _banner("1/6 a local fleet: nats-server and five services, each its own process")
    _fresh_state(ctx, obj.state_dir)
    ctx.invoke(local.up)
    _banner(f"2/6 a simulated fleet: {CLUSTERS} clusters x {NODES} nodes on v1.29.6 and v1.30.2 join with a token")
    ctx.invoke(sim.sim, clusters=CLUSTERS, nodes=NODES, versions="v1.29.6,v1.30.2", prefix="demo",
               faults=(f"{FAILING_NODE}=upgrade_fails_once",), step_seconds=0.3)  # fmt: skip
    _wait_healthy(obj, CLUSTERS, CLUSTERS * NODES)
    _banner(f"3/6 the plan to {TARGET} (nothing moves): waves, control plane first, skew checks")
    plan = call(obj, Service.UPGRADE_ORCHESTRATOR, "upgrade.plan", up.PlanRequest(spec=_spec()), up.PlanReply)
    echo(plan_text(plan.plan))
    _banner("4/6 the rollout: canary first, then 50% and 100%; watch it move")
    request = up.StartRolloutRequest(request_id=uuid.uuid4().hex, spec=_spec())
    rollout_id = call(obj, Service.UPGRADE_ORCHESTRATOR, "upgrade.start", request, up.StartRolloutReply).rollout_id
    echo(f"rollout {rollout_id} started")
    upgrade.watch_rollout(obj, rollout_id, until=lambda s: s.rollout.state is st.RolloutState.FROZEN)
    status = upgrade.fetch_status(obj, rollout_id)
    if status.rollout.state is st.RolloutState.FROZEN and status.rollout.freeze is not None:
        freeze = status.rollout.freeze
        _banner("5/6 the safety brake: no new disruption until someone decides")
        echo(f"  frozen: {freeze.reason.value}: {freeze.message}")
        for failure in status.failures:
            echo(f"  failed: {failure.cluster_id}/{failure.node_id or '-'} {failure.reason}: {failure.message}")
        echo(f"  -> `flotilla upgrade retry {rollout_id}`: failed clusters again, against the pinned target {TARGET}")
        ctx.invoke(upgrade.retry, rollout_id=rollout_id, cluster_id=None)
        _banner("6/6 after the retry: the rollout finishes")
        code = upgrade.watch_rollout(obj, rollout_id)
    else:
        code = 0 if status.rollout.state is st.RolloutState.SUCCEEDED else 1
        if status.rollout.state not in FINISHED:
            code = upgrade.watch_rollout(obj, rollout_id)
    echo(f"\nThe demo took {time.monotonic() - started:.0f}s. Where to look next:")
    for command, why in (
        (f"upgrade status {rollout_id} --nodes", "every node's steps"),
        ("events --subject 'rollout-cluster.>'", "the rollout's history, as events"),
        ("clusters list", "the fleet, with versions and health"),
        ("health", "fleet health by state"),
        ("logs upgrade-orchestrator", "the orchestrator's JSON log"),
        ("down", "stop everything"),
    ):
        echo(f"  {obj.hint(command):<58} {why}")
    if code:
        raise SystemExit(code)
