"""Fleet membership commands (the registration service): `token`, `clusters` and `nodes`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click

from flotilla_client.cli.common import CliContext, Failure, call, echo, server_option
from flotilla_client.cli.output import Column, output_option, render, render_json, render_yaml
from flotilla_client.durations import parse_duration
from flotilla_contracts.subjects import Service
from flotilla_contracts.v1 import registration as reg
from flotilla_kube.labels import parse_label_edits, parse_labels
from flotilla_kube.selectors import SelectorError, parse_selector
from flotilla_kube.taints import parse_taint_edits

pass_cli = click.make_pass_decorator(CliContext)
REG = Service.REGISTRATION


def _age(when: datetime | None) -> str:
    if when is None:
        return "-"
    seconds = (datetime.now(UTC) - when).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{max(int(seconds), 0)}s"


def _labels(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"


# --- tokens --------------------------------------------------------------------------------------------------

TOKEN_COLUMNS = (
    Column("ID", "token_id"),
    Column("STATE", lambda t: t.state.value),
    Column("USES", lambda t: f"{t.uses}/{t.max_uses}" if t.max_uses else str(t.uses)),
    Column("EXPIRES", lambda t: t.expires_at or "never"),
    Column("AUTO-APPROVE", "auto_approve"),
    Column("LABELS", lambda t: _labels(t.labels), max_width=40),
    Column("DESCRIPTION", "description", max_width=40),
)


@click.group()
def token() -> None:
    """Join tokens: what a cluster agent presents the first time it joins."""


@token.command("create")
@click.option("--ttl", default="24h", show_default=True, help="Lifetime (30m, 24h, 7d) or 'never'.")
@click.option("--max-uses", type=click.IntRange(1), help="How many clusters may join with it [default: no limit].")
@click.option("--auto-approve", is_flag=True, help="Clusters joining with it are approved at once.")
@click.option("--label", "labels", multiple=True, metavar="K=V", help="Label given to clusters joining with it.")
@click.option("--description", default="", help="What the token is for.")
@output_option("table", "json")
@server_option
@pass_cli
def token_create(
    obj: CliContext,
    ttl: str,
    max_uses: int | None,
    auto_approve: bool,
    labels: tuple[str, ...],
    description: str,
    output: str,
) -> None:
    """Create a join token; the secret is printed once and stored only as a hash.

    \b
    Examples:
      flotilla token create --ttl 2h --max-uses 10 --label env=prod
      flotilla token create --auto-approve --description "lab clusters"
    """
    try:
        ttl_s = None if ttl == "never" else parse_duration(ttl)
        request = reg.CreateTokenRequest(
            ttl_s=ttl_s or None,
            max_uses=max_uses,
            auto_approve=auto_approve,
            labels=parse_labels(labels),
            description=description,
        )
    except ValueError as exc:
        raise Failure(str(exc)) from None
    reply = call(obj, REG, "tokens.create", request, reg.CreateTokenReply)
    if output == "json":
        echo(render_json(reply))
        return
    echo(reply.token)
    echo(f"token {reply.info.token_id} created; it is not shown again, keep it now", err=True)


@token.command("list")
@click.option("--all", "include_inactive", is_flag=True, help="Include expired, revoked and used-up tokens.")
@output_option()
@server_option
@pass_cli
def token_list(obj: CliContext, include_inactive: bool, output: str) -> None:
    """List join tokens (never their secrets)."""
    reply = call(obj, REG, "tokens.list", reg.ListTokensRequest(include_inactive=include_inactive), reg.ListTokensReply)
    echo(render(reply.tokens, output, TOKEN_COLUMNS))


@token.command("revoke")
@click.argument("token_id")
@server_option
@pass_cli
def token_revoke(obj: CliContext, token_id: str) -> None:
    """Revoke a join token; clusters that joined with it stay members."""
    reply = call(obj, REG, "tokens.revoke", reg.RevokeTokenRequest(token_id=token_id), reg.RevokeTokenReply)
    echo(f"token {reply.info.token_id} revoked")


# --- clusters ------------------------------------------------------------------------------------------------

CLUSTER_COLUMNS = (
    Column("ID", "cluster_id"),
    Column("NAME", lambda c: c.identity.name),
    Column("STATE", lambda c: c.state.value),
    Column("VERSION", lambda c: c.identity.kubernetes_version),
    Column("NODES", "node_count"),
    Column("REGION", lambda c: c.identity.region),
    Column("LABELS", lambda c: _labels(c.labels), max_width=48),
    Column("TAINTS", lambda c: ",".join(f"{t.key}:{t.effect.value}" for t in c.taints) or "-", max_width=32),
    Column("AGE", lambda c: _age(c.joined_at)),
)


def list_all_clusters(obj: CliContext, selector: str, states: list[reg.ClusterState]) -> list[reg.ClusterInfo]:
    """Every page of `clusters.list`."""
    found: list[reg.ClusterInfo] = []
    cursor = ""
    while True:
        page = call(
            obj,
            REG,
            "clusters.list",
            reg.ListClustersRequest(selector=selector, states=states, cursor=cursor),
            reg.ListClustersReply,
        )
        found += page.clusters
        if not page.next_cursor:
            return found
        cursor = page.next_cursor


@click.group()
def clusters() -> None:
    """Clusters of the fleet: list, inspect, approve, reject, label, taint, deregister."""


@clusters.command("list")
@click.option("-l", "--selector", default="", help="Label selector: env=prod,region in (eu,us),!gpu")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice([s.value for s in reg.ClusterState]),
    help="Only clusters in these states [default: all but Deregistered].",
)
@output_option()
@server_option
@pass_cli
def clusters_list(obj: CliContext, selector: str, states: tuple[str, ...], output: str) -> None:
    """List clusters, optionally by label selector (Kubernetes syntax: =, ==, !=, in, notin, key, !key)."""
    try:
        parse_selector(selector)
    except SelectorError as exc:
        raise Failure(str(exc)) from None
    found = list_all_clusters(obj, selector, [reg.ClusterState(s) for s in states])
    echo(render(found, output, CLUSTER_COLUMNS))


NODE_COLUMNS = (
    Column("CLUSTER", "cluster_id"),
    Column("NODE", lambda n: n.facts.node_name),
    Column("ROLE", lambda n: n.facts.role.value),
    Column("KUBELET", lambda n: n.facts.kubelet_version),
    Column("UNSCHEDULABLE", lambda n: n.facts.unschedulable),
    Column("UPDATED", lambda n: _age(n.updated_at)),
)


@clusters.command("get")
@click.argument("cluster_id")
@output_option("yaml", "json", "table", default="yaml")
@server_option
@pass_cli
def clusters_get(obj: CliContext, cluster_id: str, output: str) -> None:
    """Show one cluster with its nodes."""
    reply = call(obj, REG, "clusters.get", reg.GetClusterRequest(cluster_id=cluster_id), reg.ClusterReply)
    if output == "table":
        echo(render([reply.cluster], "table", CLUSTER_COLUMNS) + "\n\n" + render(reply.nodes, "table", NODE_COLUMNS))
    else:
        echo(render_json(reply) if output == "json" else render_yaml(reply))


def _changed(reply: reg.ClusterReply, what: str) -> None:
    echo(f"cluster {reply.cluster.cluster_id} {what} ({reply.cluster.state.value})")


@clusters.command("approve")
@click.argument("cluster_id")
@server_option
@pass_cli
def clusters_approve(obj: CliContext, cluster_id: str) -> None:
    """Approve a Pending cluster; its agents learn it at once."""
    _changed(
        call(obj, REG, "clusters.approve", reg.ApproveClusterRequest(cluster_id=cluster_id), reg.ClusterReply),
        "approved",
    )


@clusters.command("reject")
@click.argument("cluster_id")
@click.option("--reason", required=True, help="Why; the cluster's agent shows it.")
@server_option
@pass_cli
def clusters_reject(obj: CliContext, cluster_id: str, reason: str) -> None:
    """Reject a Pending cluster with a reason."""
    request = reg.RejectClusterRequest(cluster_id=cluster_id, reason=reason)
    _changed(call(obj, REG, "clusters.reject", request, reg.ClusterReply), "rejected")


@clusters.command("label")
@click.argument("cluster_id")
@click.argument("edits", nargs=-1, required=True)
@server_option
@pass_cli
def clusters_label(obj: CliContext, cluster_id: str, edits: tuple[str, ...]) -> None:
    """Set labels with key=value and remove them with key- (as kubectl label).

    \b
    Example:
      flotilla clusters label prod-eu-1-3fa9c2 tier=gold canary-
    """
    try:
        edit = parse_label_edits(edits)
    except ValueError as exc:
        raise Failure(str(exc)) from None
    request = reg.LabelClusterRequest(cluster_id=cluster_id, set_labels=dict(edit.set), remove_keys=sorted(edit.remove))
    reply = call(obj, REG, "clusters.label", request, reg.ClusterReply)
    echo(f"cluster {cluster_id} labels: {_labels(reply.cluster.labels)}")


@clusters.command("taint")
@click.argument("cluster_id")
@click.argument("edits", nargs=-1, required=True)
@server_option
@pass_cli
def clusters_taint(obj: CliContext, cluster_id: str, edits: tuple[str, ...]) -> None:
    """Add taints key[=value]:Effect and remove them with key- or key:Effect- (as kubectl taint).

    \b
    Effects: NoSchedule, PreferNoSchedule, NoExecute. Example:
      flotilla clusters taint prod-eu-1-3fa9c2 maintenance=true:NoSchedule
    """
    try:
        edit = parse_taint_edits(edits)
    except ValueError as exc:
        raise Failure(str(exc)) from None
    request = reg.TaintClusterRequest(
        cluster_id=cluster_id,
        add=list(edit.add),
        remove=[reg.TaintRef(key=r.key, effect=r.effect) for r in edit.remove],
    )
    reply = call(obj, REG, "clusters.taint", request, reg.ClusterReply)
    taints = ",".join(
        f"{t.key}={t.value}:{t.effect.value}" if t.value else f"{t.key}:{t.effect.value}" for t in reply.cluster.taints
    )
    echo(f"cluster {cluster_id} taints: {taints or '-'}")


@clusters.command("deregister")
@click.argument("cluster_id")
@click.option("--reason", default="", help="Why, for the record.")
@server_option
@pass_cli
def clusters_deregister(obj: CliContext, cluster_id: str, reason: str) -> None:
    """Remove a cluster from the fleet; its credential stops working at once."""
    request = reg.DeregisterClusterRequest(cluster_id=cluster_id, reason=reason)
    _changed(call(obj, REG, "clusters.deregister", request, reg.ClusterReply), "deregistered")


# --- nodes ---------------------------------------------------------------------------------------------------


@click.group()
def nodes() -> None:
    """The node inventory reported by each cluster's agents."""


@nodes.command("list")
@click.option("--cluster", "cluster_id", help="Only this cluster's nodes.")
@output_option()
@server_option
@pass_cli
def nodes_list(obj: CliContext, cluster_id: str | None, output: str) -> None:
    """List nodes with role and kubelet version."""
    found: list[Any] = []
    cursor = ""
    while True:
        page = call(
            obj, REG, "nodes.list", reg.ListNodesRequest(cluster_id=cluster_id, cursor=cursor), reg.ListNodesReply
        )
        found += page.nodes
        if not page.next_cursor:
            break
        cursor = page.next_cursor
    echo(render(found, output, NODE_COLUMNS))
