"""Fleet membership commands (the registration service): `token`, `clusters` and `nodes`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import click
import msgspec

from flotilla_client.cli import completion
from flotilla_client.cli.cluster_refs import get_cluster, list_all_clusters, resolve_cluster
from flotilla_client.cli.common import CliContext, Failure, call, echo, server_option
from flotilla_client.cli.output import Column, Listing, output_option, render, render_json, render_yaml, show_list
from flotilla_client.cli.watching import entity_subjects, watch_list, watch_option
from flotilla_client.errors import FlotillaClientError
from flotilla_contracts.subjects import Entity, Service
from flotilla_contracts.v1 import heartbeat as hb
from flotilla_contracts.v1 import registration as reg
from flotilla_kube.labels import parse_label_edits
from flotilla_kube.selectors import SelectorError, parse_selector
from flotilla_kube.taints import parse_taint_edits

pass_cli = click.make_pass_decorator(CliContext)
REG = Service.REGISTRATION
HB = Service.HEARTBEAT


def age(when: datetime | None) -> str:
    if when is None:
        return "-"
    seconds = (datetime.now(UTC) - when).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{max(int(seconds), 0)}s"


def labels_text(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"


REGION_LABELS = ("region", "topology.kubernetes.io/region")
ZONE_LABELS = ("zone", "topology.kubernetes.io/zone")


def _labelled(cluster: reg.ClusterInfo, keys: tuple[str, ...], reported: str) -> str:
    """The first of these labels the cluster has (the fleet's word), else what its agent reported."""
    return next((cluster.labels[k] for k in keys if cluster.labels.get(k)), reported)


def region_of(cluster: reg.ClusterInfo) -> str:
    """`region` label, else `topology.kubernetes.io/region`, else the region the cluster's agent reported."""
    return _labelled(cluster, REGION_LABELS, cluster.identity.region)


# --- clusters ------------------------------------------------------------------------------------------------

CLUSTER_COLUMNS = (
    Column("ID", "cluster_id"),
    Column("NAME", lambda c: c.identity.name),
    Column("STATE", lambda c: c.state.value),
    Column("VERSION", lambda c: c.identity.kubernetes_version),
    Column("NODES", "node_count"),
    Column("REGION", region_of),
    Column("LABELS", lambda c: labels_text(c.labels), max_width=48),
    Column("TAINTS", lambda c: ",".join(f"{t.key}:{t.effect.value}" for t in c.taints) or "-", max_width=32),
    Column("AGE", lambda c: age(c.joined_at)),
    Column("ZONE", lambda c: _labelled(c, ZONE_LABELS, c.identity.zone), wide=True),
    Column("PROVIDER", lambda c: c.identity.provider, wide=True),
    Column("AGENT", "agent_version", wide=True),
    Column("APPROVED BY", lambda c: c.approved_by.value if c.approved_by else "-", wide=True),
)


@dataclass(frozen=True)
class ClusterRow:
    """A cluster as registration knows it, with its health as the heartbeat service sees it (if it answered)."""

    cluster: reg.ClusterInfo
    health: hb.ClusterHealthInfo | None

    def plain(self) -> dict[str, Any]:
        return {**msgspec.to_builtins(self.cluster), "health": msgspec.to_builtins(self.health)}


def _versions(versions: list[str]) -> str:
    return ",".join(sorted(set(versions))) or "-"


def _of_cluster(column: Column) -> Column:
    """A cluster column read from a ClusterRow."""
    return Column(column.header, lambda row: column.value(row.cluster), column.max_width, column.wide)


CLUSTER_ROW_COLUMNS = (
    *(_of_cluster(c) for c in CLUSTER_COLUMNS[:4]),
    Column("HEALTH", lambda r: r.health.state.value if r.health else "-"),
    Column("KUBELETS", lambda r: _versions(r.health.kubelet_versions) if r.health else "-", max_width=24),
    Column("NODES", lambda r: f"{r.health.nodes.ready}/{r.cluster.node_count}" if r.health else r.cluster.node_count),
    Column("LAST SEEN", lambda r: age(r.health.last_heartbeat_at) if r.health else "-"),
    *(_of_cluster(c) for c in CLUSTER_COLUMNS[5:]),
)
CLUSTER_LISTING = Listing("cluster", "clusters", CLUSTER_ROW_COLUMNS, lambda r: r.cluster.cluster_id, ClusterRow.plain)


def health_of_clusters(obj: CliContext, cluster_ids: list[str]) -> dict[str, hb.ClusterHealthInfo]:
    """Health per cluster from the heartbeat service; empty (with a warning) when it does not answer."""
    found: dict[str, hb.ClusterHealthInfo] = {}
    try:
        for start in range(0, len(cluster_ids), 1000):
            chunk = cluster_ids[start : start + 1000]
            reply = call(
                obj,
                HB,
                "health.clusters",
                hb.ClustersHealthRequest(cluster_ids=chunk, limit=1000),
                hb.ClustersHealthReply,
            )
            found.update((info.cluster_id, info) for info in reply.clusters)
    except FlotillaClientError as exc:
        echo(f"flotilla: warning: no health shown: {exc}", err=True)
    return found


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
@watch_option
@server_option
@pass_cli
def clusters_list(obj: CliContext, selector: str, states: tuple[str, ...], output: str, watch: bool) -> None:
    """List clusters, optionally by label selector (Kubernetes syntax: =, ==, !=, in, notin, key, !key).

    With --watch the list is printed again whenever a cluster, its nodes or their health change (joins,
    approvals, labels, versions, health transitions).

    \b
    Examples:
      flotilla clusters list
      flotilla clusters list -l 'env=prod,region in (eu,us)' -o wide
      flotilla clusters list --state Pending -o name
      flotilla clusters list -w
    """
    try:
        parse_selector(selector)
    except SelectorError as exc:
        raise Failure(str(exc)) from None

    def fetch() -> list[ClusterRow]:
        found = list_all_clusters(obj, selector, [reg.ClusterState(s) for s in states])
        health = health_of_clusters(obj, [c.cluster_id for c in found]) if found else {}
        return [ClusterRow(c, health.get(c.cluster_id)) for c in found]

    if watch:
        subjects = entity_subjects((Entity.CLUSTER, Entity.CLUSTER_HEALTH, Entity.NODE, Entity.NODE_HEALTH))
        watch_list(obj, subjects, fetch, output, CLUSTER_LISTING)
    else:
        show_list(fetch(), output, CLUSTER_LISTING)


NODE_COLUMNS = (
    Column("CLUSTER", "cluster_id"),
    Column("NODE", lambda n: n.facts.node_name),
    Column("ROLE", lambda n: n.facts.role.value),
    Column("KUBELET", lambda n: n.facts.kubelet_version),
    Column("UNSCHEDULABLE", lambda n: n.facts.unschedulable),
    Column("UPDATED", lambda n: age(n.updated_at)),
    Column("OS", lambda n: n.facts.os_image, wide=True),
    Column("RUNTIME", lambda n: n.facts.container_runtime, wide=True),
)


@clusters.command("get")
@click.argument("cluster_id", shell_complete=completion.clusters)
@output_option("yaml", "json", "table", "wide", "name", default="yaml")
@server_option
@pass_cli
def clusters_get(obj: CliContext, cluster_id: str, output: str) -> None:
    """Show one cluster with its nodes.

    \b
    Examples:
      flotilla clusters get sim-0001-1a2b3c
      flotilla clusters get sim-0001-1a2b3c -o wide
    """
    reply = get_cluster(obj, cluster_id)
    if output in ("table", "wide"):
        clusters, nodes = render([reply.cluster], output, CLUSTER_COLUMNS), render(reply.nodes, output, NODE_COLUMNS)
        echo(clusters + "\n\n" + nodes)
    elif output == "name":
        echo(f"cluster/{reply.cluster.cluster_id}")
    else:
        echo(render_json(reply) if output == "json" else render_yaml(reply))


def _changed(reply: reg.ClusterReply, what: str) -> None:
    echo(f"cluster {reply.cluster.cluster_id} {what} ({reply.cluster.state.value})")


@clusters.command("approve")
@click.argument("cluster_id", shell_complete=completion.clusters)
@server_option
@pass_cli
def clusters_approve(obj: CliContext, cluster_id: str) -> None:
    """Approve a Pending cluster; its agents learn it at once.

    \b
    Example:
      flotilla clusters approve sim-0001           # by name or ID
    """
    cluster_id = resolve_cluster(obj, cluster_id)
    _changed(
        call(obj, REG, "clusters.approve", reg.ApproveClusterRequest(cluster_id=cluster_id), reg.ClusterReply),
        "approved",
    )


@clusters.command("reject")
@click.argument("cluster_id", shell_complete=completion.clusters)
@click.option("--reason", required=True, help="Why; the cluster's agent shows it.")
@server_option
@pass_cli
def clusters_reject(obj: CliContext, cluster_id: str, reason: str) -> None:
    """Reject a Pending cluster with a reason.

    \b
    Example:
      flotilla clusters reject sim-0001 --reason "unknown owner"
    """
    cluster_id = resolve_cluster(obj, cluster_id)
    request = reg.RejectClusterRequest(cluster_id=cluster_id, reason=reason)
    _changed(call(obj, REG, "clusters.reject", request, reg.ClusterReply), "rejected")


@clusters.command("label")
@click.argument("cluster_id", shell_complete=completion.clusters)
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
    cluster_id = resolve_cluster(obj, cluster_id)  # after the local checks: bad input sends nothing
    request = reg.LabelClusterRequest(cluster_id=cluster_id, set_labels=dict(edit.set), remove_keys=sorted(edit.remove))
    reply = call(obj, REG, "clusters.label", request, reg.ClusterReply)
    echo(f"cluster {cluster_id} labels: {labels_text(reply.cluster.labels)}")


@clusters.command("taint")
@click.argument("cluster_id", shell_complete=completion.clusters)
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
    cluster_id = resolve_cluster(obj, cluster_id)  # after the local checks: bad input sends nothing
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
@click.argument("cluster_id", shell_complete=completion.clusters)
@click.option("--reason", default="", help="Why, for the record.")
@server_option
@pass_cli
def clusters_deregister(obj: CliContext, cluster_id: str, reason: str) -> None:
    """Remove a cluster from the fleet; its credential stops working at once.

    \b
    What happens:
      - the bus refuses the cluster's credential from now on (the auth callout asks registration);
      - its open bus connections are closed at once (registration kicks them as registration-revoker;
        without FLOTILLA_REGISTRATION_REVOKER_NATS_URL they end when their grant expires, 10 min by default);
      - its agents keep retrying with back-off, log "the server refused" at ERROR and answer /readyz with
        "not ready" and the reason; to bring the cluster back, join it again with a new token;
      - the heartbeat service stops tracking it (anything it still sends is counted as noise) and the
        scheduler re-places its workloads on other clusters.

    \b
    Example:
      flotilla clusters deregister sim-0003-1a2b3c --reason "decommissioned"
    """
    cluster_id = resolve_cluster(obj, cluster_id)
    request = reg.DeregisterClusterRequest(cluster_id=cluster_id, reason=reason)
    _changed(call(obj, REG, "clusters.deregister", request, reg.ClusterReply), "deregistered")
