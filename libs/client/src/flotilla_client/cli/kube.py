"""`flotilla kube`: real Kubernetes control planes with kwok nodes as member clusters of the local fleet."""

from __future__ import annotations

import click

from flotilla_client.busauth import without_user
from flotilla_client.cli.common import CliContext, Failure, call, echo
from flotilla_client.cli.output import output_option, render_json, render_yaml
from flotilla_client.cli.sim import wait_for_clusters
from flotilla_client.errors import LocalFleetError
from flotilla_client.kubeworld import launch
from flotilla_contracts.subjects import Service
from flotilla_contracts.v1 import registration as reg

pass_cli = click.make_pass_decorator(CliContext)


@click.group()
def kube() -> None:
    """Real Kubernetes control planes (etcd, kube-apiserver, controller-manager, scheduler) with kwok nodes,
    joined to the local fleet: a node-agent per node with the Kubernetes driver.

    The programs come from `make k8s-bins` (built once from tools/k8s/go.mod, ~10 min; then cached). kwok fakes
    the kubelets: pods go Running when scheduled, no container runs; an upgrade moves the Node's kubelet version.

    \b
    Examples:
      flotilla up && flotilla kube up --clusters 2 --workers 3
      flotilla kube status
      flotilla kube down
    """


@kube.command("up")
@click.option("--clusters", type=click.IntRange(1, 8), default=2, show_default=True)
@click.option("--workers", type=click.IntRange(1, 20), default=3, show_default=True, help="Worker nodes per cluster.")
@click.option("--version", default="v1.36.3", show_default=True, help="Kubelet version the kwok nodes start at.")
@click.option("--prefix", default="kube", show_default=True, help="Cluster names: <prefix>-1, <prefix>-2, ...")
@click.option(
    "--agent-identity",
    type=click.Choice(["shipped", "admin"]),
    default="shipped",
    show_default=True,
    help="shipped: the node-agents use deploy/services/node-agent's ServiceAccount and RBAC (rendered, applied, a "
    "real token); admin: they are cluster admins.",
)
@click.option("--timeout", type=float, default=180.0, show_default=True, help="Seconds to wait for start and joins.")
@pass_cli
def up(
    obj: CliContext, clusters: int, workers: int, version: str, prefix: str, agent_identity: str, timeout: float
) -> None:
    """Start the control planes and their node-agents, and wait until every cluster joined the fleet.

    Needs a running local fleet (`flotilla up`). Stopped by `flotilla kube down` or `flotilla down`.

    \b
    Examples:
      flotilla kube up
      flotilla kube up --clusters 1 --workers 2 --version v1.36.3
    """
    request = reg.CreateTokenRequest(
        ttl_s=3600.0, max_uses=clusters, auto_approve=True, labels={"env": "kube"},
        description=f"flotilla kube {prefix}",
    )  # fmt: skip
    token = call(obj, Service.REGISTRATION, "tokens.create", request, reg.CreateTokenReply).token
    try:
        manifests = launch.render_agent_manifests(obj.state_dir) if agent_identity == "shipped" else None
        log = launch.log_file(obj.state_dir)
        echo(f"starting {clusters} control plane(s) with 1 + {workers} kwok nodes each (log {log})")
        world = launch.start(
            obj.state_dir, without_user(obj.server_url()), token, clusters=clusters, workers=workers,
            version=version, prefix=prefix, agent_manifests=manifests, timeout_s=timeout, progress=echo,
        )  # fmt: skip
    except LocalFleetError as exc:
        raise Failure(str(exc)) from None
    for cluster in world["clusters"]:
        echo(f"  {cluster['name']}: {cluster['server']}  nodes {', '.join(cluster['nodes'])}")
        echo(f"    kubectl --kubeconfig {cluster['admin_kubeconfig']} get nodes")
    joined = wait_for_clusters(obj, prefix, clusters, timeout)
    echo(f"all {joined} clusters joined and approved")


@kube.command("status")
@output_option("table", "json", "yaml")
@pass_cli
def status(obj: CliContext, output: str) -> None:
    """The running control planes: servers, kubeconfigs, nodes and the agents' identity.

    json and yaml: the list of control planes with every field recorded for each (name, server, kubeconfigs, nodes).

    \b
    Examples:
      flotilla kube status
      flotilla kube status -o json
    """
    world = launch.load_world(obj.state_dir)
    if world is None or not launch.running(obj.state_dir):
        raise Failure("no Kubernetes world runs for this state folder; start one with `flotilla kube up`")
    if output in ("json", "yaml"):
        echo(render_json(world["clusters"]) if output == "json" else render_yaml(world["clusters"]))
        return
    for cluster in world["clusters"]:
        echo(f"{cluster['name']}: {cluster['server']}")
        echo(f"  admin kubeconfig: {cluster['admin_kubeconfig']}")
        echo(f"  node-agents as {cluster['agent_identity']}: {', '.join(cluster['nodes'])}")


@kube.command("down")
@pass_cli
def down(obj: CliContext) -> None:
    """Stop the node-agents, then the control planes (the local fleet keeps running).

    \b
    Example:
      flotilla kube down
    """
    if not launch.stop(obj.state_dir, 60.0, echo):
        echo("no Kubernetes world was running")
