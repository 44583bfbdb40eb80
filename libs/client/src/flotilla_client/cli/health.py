"""`flotilla health`: fleet counts by health state and the worst clusters, from the heartbeat service."""

from __future__ import annotations

import click

from flotilla_client.cli.common import CliContext, call, echo, server_option
from flotilla_client.cli.output import Column, output_option, render_json, render_table, render_yaml
from flotilla_contracts.subjects import Service
from flotilla_contracts.v1.heartbeat import ClusterHealth, ClusterHealthInfo, FleetHealthReply, FleetHealthRequest

pass_cli = click.make_pass_decorator(CliContext)

WORST_COLUMNS = (
    Column("CLUSTER", "cluster_id"),
    Column("HEALTH", lambda c: c.state.value),
    Column("READY", lambda c: c.nodes.ready),
    Column("NOT READY", lambda c: c.nodes.not_ready),
    Column("UNREACHABLE", lambda c: c.nodes.unreachable),
    Column("LOST", lambda c: c.nodes.lost),
    Column("REASON", lambda c: c.message or c.reason, max_width=60),
    Column("SINCE", "since", wide=True),
    Column("LAST SEEN", "last_heartbeat_at", wide=True),
    Column("API SERVERS", lambda c: c.api_server_versions, wide=True),
    Column("KUBELETS", lambda c: c.kubelet_versions, wide=True),
)


def summary_text(reply: FleetHealthReply, wide: bool = False) -> str:
    """The table form: one line of cluster counts, one of node counts, then the worst clusters (`wide`: more
    columns)."""
    clusters = "  ".join(f"{state.value} {reply.clusters.get(state, 0)}" for state in ClusterHealth)
    n = reply.nodes
    lines = [
        f"clusters: {clusters}",
        f"nodes:    Ready {n.ready}  NotReady {n.not_ready}  Unreachable {n.unreachable}  Lost {n.lost}",
    ]
    missing = sorted(set(range(reply.partition_count)) - set(reply.partitions))
    if missing:
        lines.append(f"warning: partitions {missing} of {reply.partition_count} did not answer; counts are partial")
    worst: list[ClusterHealthInfo] = reply.worst_clusters
    lines.append("")
    lines.append(render_table(worst, WORST_COLUMNS, wide=wide) if worst else "every cluster is Ready")
    return "\n".join(lines)


@click.command()
@click.option("--worst", default=10, show_default=True, type=click.IntRange(0, 100), help="How many worst clusters.")
@output_option()
@server_option
@pass_cli
def health(obj: CliContext, worst: int, output: str) -> None:
    """Fleet health: clusters and nodes counted by state, and the worst clusters first.

    \b
    Examples:
      flotilla health
      flotilla health --worst 20 -o json
      flotilla health -o name        # cluster/ID of the worst clusters, one a line
    """
    reply = call(obj, Service.HEARTBEAT, "health.summary", FleetHealthRequest(worst=worst), FleetHealthReply)
    if output == "json":
        echo(render_json(reply))
    elif output == "yaml":
        echo(render_yaml(reply))
    elif output == "name":
        if reply.worst_clusters:
            echo("\n".join(f"cluster/{c.cluster_id}" for c in reply.worst_clusters))
        else:
            echo("No unhealthy clusters found.", err=True)
    else:
        echo(summary_text(reply, wide=output == "wide"))
