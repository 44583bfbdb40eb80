"""`flotilla nodes`: the node inventory each cluster's agents report (registration), with the health the heartbeat
service sees."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import click
import msgspec

from flotilla_client.cli import completion
from flotilla_client.cli.cluster_refs import resolve_optional
from flotilla_client.cli.common import CliContext, call, echo, server_option
from flotilla_client.cli.fleet import HB, REG, age
from flotilla_client.cli.output import Column, Listing, output_option, show_list
from flotilla_client.cli.watching import entity_subjects, watch_list, watch_option
from flotilla_client.errors import FlotillaClientError
from flotilla_contracts.subjects import Entity
from flotilla_contracts.v1 import heartbeat as hb
from flotilla_contracts.v1 import registration as reg

pass_cli = click.make_pass_decorator(CliContext)


@dataclass(frozen=True)
class NodeRow:
    node: reg.NodeInfo
    health: hb.NodeHealthInfo | None

    def plain(self) -> dict[str, Any]:
        return {**msgspec.to_builtins(self.node), "health": msgspec.to_builtins(self.health)}


NODE_ROW_COLUMNS = (
    Column("CLUSTER", lambda r: r.node.cluster_id),
    Column("NODE", lambda r: r.node.facts.node_name),
    Column("ROLE", lambda r: r.node.facts.role.value),
    Column("HEALTH", lambda r: r.health.state.value if r.health else "-"),
    Column("KUBELET", lambda r: (r.health.kubelet_version if r.health else None) or r.node.facts.kubelet_version),
    Column("KUBE-PROXY", lambda r: r.health.kube_proxy_version if r.health else "-"),
    Column("LAST SEEN", lambda r: age(r.health.last_heartbeat_at) if r.health else "-"),
    Column("REASON", lambda r: r.health.reason if r.health else "-", max_width=40),
    Column("UNSCHEDULABLE", lambda r: r.node.facts.unschedulable, wide=True),
    Column("OS", lambda r: r.node.facts.os_image, wide=True),
    Column("KERNEL", lambda r: r.node.facts.kernel_version, wide=True),
    Column("RUNTIME", lambda r: r.node.facts.container_runtime, wide=True),
    Column("ARCH", lambda r: r.node.facts.architecture, wide=True),
    Column("PODS", lambda r: r.node.facts.pod_count, wide=True),
)
NODE_LISTING = Listing(
    "node", "nodes", NODE_ROW_COLUMNS, lambda r: f"{r.node.cluster_id}/{r.node.facts.node_id}", NodeRow.plain
)


def health_of_nodes(obj: CliContext, cluster_id: str | None) -> dict[tuple[str, str], hb.NodeHealthInfo]:
    found: dict[tuple[str, str], hb.NodeHealthInfo] = {}
    cursor = ""
    try:
        while True:
            request = hb.NodesHealthRequest(cluster_id=cluster_id, cursor=cursor, limit=1000)
            reply = call(obj, HB, "health.nodes", request, hb.NodesHealthReply)
            found.update(((n.cluster_id, n.node_id), n) for n in reply.nodes)
            if not reply.next_cursor:
                return found
            cursor = reply.next_cursor
    except FlotillaClientError as exc:
        echo(f"flotilla: warning: no health shown: {exc}", err=True)
    return found


@click.group()
def nodes() -> None:
    """The node inventory reported by each cluster's agents."""


@nodes.command("list")
@click.option("--cluster", "cluster_id", shell_complete=completion.clusters, help="Only this cluster's nodes.")
@output_option()
@watch_option
@server_option
@pass_cli
def nodes_list(obj: CliContext, cluster_id: str | None, output: str, watch: bool) -> None:
    """List nodes with role, health, versions and when each was last heard.

    With --watch the list is printed again whenever a node's inventory or health changes.

    \b
    Examples:
      flotilla nodes list --cluster sim-0001
      flotilla nodes list -o wide
      flotilla nodes list --cluster sim-0001 -w
    """
    cluster_id = resolve_optional(obj, cluster_id)

    def fetch() -> list[NodeRow]:
        found: list[Any] = []
        cursor = ""
        while True:
            request = reg.ListNodesRequest(cluster_id=cluster_id, cursor=cursor)
            page = call(obj, REG, "nodes.list", request, reg.ListNodesReply)
            found += page.nodes
            if not page.next_cursor:
                break
            cursor = page.next_cursor
        health = health_of_nodes(obj, cluster_id) if found else {}
        return [NodeRow(n, health.get((n.cluster_id, n.facts.node_id))) for n in found]

    if watch:
        within = (cluster_id,) if cluster_id else ()
        watch_list(obj, entity_subjects((Entity.NODE, Entity.NODE_HEALTH), *within), fetch, output, NODE_LISTING)
    else:
        show_list(fetch(), output, NODE_LISTING)
