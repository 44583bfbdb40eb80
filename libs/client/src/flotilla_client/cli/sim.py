"""`flotilla sim`: a simulated fleet (node-agents with the sim driver) joining the local fleet."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import click

from flotilla_client import localfleet, runfile
from flotilla_client.cli.cluster_refs import list_all_clusters
from flotilla_client.cli.common import BadUsage, CliContext, Failure, call, echo
from flotilla_client.errors import ClientError
from flotilla_client.natsserver import free_port, port_open
from flotilla_contracts import sim as names
from flotilla_contracts.errors import ErrorCode
from flotilla_contracts.subjects import Service
from flotilla_contracts.v1 import registration as reg

pass_cli = click.make_pass_decorator(CliContext)
SIM_LABEL = "flotilla.dev/sim-fleet"  # the sim's prefix, on the clusters of a sim whose token `flotilla sim` made


@click.command()
@click.option("--clusters", type=click.IntRange(1, 10_000), default=12, show_default=True)
@click.option(
    "--nodes",
    type=click.IntRange(1, 1_000),
    default=4,
    show_default=True,
    help="Nodes per cluster; the first is the control plane.",
)
@click.option(
    "--versions", default="v1.29.6,v1.30.2", show_default=True, help="Kubernetes versions dealt to clusters in turn."
)
@click.option(
    "--fail-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Share of nodes with a random injected fault.",
)
@click.option(
    "--fault",
    "faults",
    multiple=True,
    metavar="NODE=FAULT",
    help=f"A fault on a named node, e.g. sim-0003-n02=upgrade_fails_once; faults: {', '.join(names.ALL_FAULTS)}.",
)
@click.option("--seed", type=int, default=1, show_default=True, help="Same seed, same fleet.")
@click.option(
    "--step-seconds",
    type=click.FloatRange(0),
    default=0.5,
    show_default=True,
    help="Simulated time each node step takes.",
)
@click.option("--prefix", default="sim", show_default=True, help="Cluster name prefix (one per simulated fleet).")
@click.option("--token", default="", help="Join token [default: a new auto-approving one for these clusters].")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until every cluster has joined.")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds to wait for the joins.")
@click.option(
    "--batch-heartbeats",
    is_flag=True,
    help="Each cluster agent relays its nodes' heartbeats as one HeartbeatBatch a round (docs/heartbeat.md), "
    "instead of one message per node.",
)
@click.option(
    "--bus-address",
    default="",
    metavar="HOST",
    help="Connect the sim's clusters and nodes to the bus at this address (same port), e.g. 127.0.0.2: one "
    "address gives at most ~28,000 connections (the ephemeral port range), so sims past that each use their "
    "own, with `flotilla up --host 0.0.0.0` (docs/scale.md) [default: the fleet's address].",
)
@click.option(
    "--bus-server",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    metavar="K",
    help="Connect the sim's clusters and nodes to the K-th nats-server of `flotilla up --bus-servers N` (each "
    "server holds its own connections; docs/scale.md); the services are on the first.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=0,
    help="Serve the fleet's /metrics (size, steps executed) on 127.0.0.1 at this port [default: a free one].",
)
@pass_cli
def sim(
    obj: CliContext, clusters: int, nodes: int, versions: str, fail_rate: float, faults: tuple[str, ...],
    seed: int, step_seconds: float, prefix: str, token: str, wait: bool, timeout: float, batch_heartbeats: bool,
    bus_address: str, bus_server: int, metrics_port: int,
) -> None:  # fmt: skip
    """Start a simulated fleet that joins the local fleet: every node runs the real node-agent code
    with the simulated driver (deterministic for a seed), heartbeats and obeys upgrade steps.

    It runs in the background, restarted by the local fleet's supervisor if it dies, until `flotilla down`.

    \b
    Examples:
      flotilla sim --clusters 12 --nodes 4 --versions v1.29.6,v1.30.2
      flotilla sim --clusters 3 --fault sim-0001-n02=upgrade_fails_once
      flotilla sim --clusters 1000 --nodes 10 --batch-heartbeats --step-seconds 0 --prefix big
      flotilla sim --clusters 1000 --nodes 10 --prefix second --bus-server 2   # after `up --bus-servers 2`
    """
    # The sim refuses a bad --fault by the same rule, but it runs detached: we would learn it only when the
    # joins time out. So refuse here, before a token is made or a process started.
    try:
        for fault in faults:
            names.parse_fault(fault, prefix=prefix, clusters=clusters, nodes=nodes)
    except names.FaultError as exc:
        raise BadUsage(str(exc)) from None
    check_bus_server(obj, bus_server)
    if bus_address:
        check_bus_address(obj, bus_address, bus_server)
    given_token = bool(token)
    if not token:
        request = reg.CreateTokenRequest(
            ttl_s=3600.0, max_uses=clusters, auto_approve=True, labels={"env": "sim", SIM_LABEL: prefix},
            description=f"flotilla sim {prefix}",
        )  # fmt: skip
        token = call(obj, Service.REGISTRATION, "tokens.create", request, reg.CreateTokenReply).token
    metrics_port = metrics_port or free_port()  # chosen now: a restart by the supervisor keeps it
    args = [
        "--clusters",
        str(clusters),
        "--nodes",
        str(nodes),
        "--versions",
        versions,
        "--fail-rate",
        str(fail_rate),
        "--seed",
        str(seed),
        "--step-seconds",
        str(step_seconds),
        "--token",
        token,
        "--stats-every",
        "30",
        "--metrics-port",
        str(metrics_port),
    ]
    for fault in faults:
        args += ["--fault", fault]
    if batch_heartbeats:
        args.append("--batch-heartbeats")
    entry = localfleet.start_sim(
        obj.state_dir, args, prefix=prefix, clusters=clusters, nodes=nodes, bus_address=bus_address,
        bus_server=bus_server,
    )  # fmt: skip
    echo(f"simulated fleet {prefix!r}: {clusters} clusters x {nodes} nodes (pid {entry.pid}, log {entry.log})")
    echo(f"  metrics: http://127.0.0.1:{metrics_port}/metrics")
    if wait:
        joined = wait_for_clusters(obj, prefix, clusters, timeout, labelled=not given_token)
        echo(f"all {joined} clusters joined and approved")


def check_bus_server(obj: CliContext, server: int) -> None:
    """Refuse a --bus-server the local fleet does not have (the sim runs detached)."""
    info = runfile.load(obj.state_dir.resolve())
    count = len(runfile.bus_servers(info)) if info is not None else 1
    if server > count:
        raise BadUsage(
            f"--bus-server {server}: this local fleet has {count} nats-server(s); start it with "
            f"`flotilla up --bus-servers {server}` or more"
        )


def check_bus_address(obj: CliContext, address: str, server: int = 1) -> None:
    """Refuse an address where the local fleet's nats-server (the `server`-th) does not listen."""
    info = runfile.load(obj.state_dir.resolve())
    port = urlsplit(runfile.bus_servers(info)[server - 1].url).port if info is not None else None
    if port is None:
        raise BadUsage(f"--bus-address {address}: no local fleet runs from here; start one with `flotilla up`")
    if info is not None and info.nats.url.startswith("tls://"):
        raise BadUsage(f"--bus-address {address}: the bus has TLS, its certificate names the fleet's address only")
    if not port_open(address, port):
        raise BadUsage(
            f"--bus-address {address}: nats-server does not listen on {address}:{port}; start the fleet with "
            "`flotilla up --host 0.0.0.0` to use other loopback addresses (127.0.0.2, ...)"
        )


def wait_for_clusters(obj: CliContext, prefix: str, expected: int, timeout_s: float, labelled: bool = False) -> int:
    """Until `expected` Approved clusters named `<prefix>-*` exist; prints progress. `labelled`: they carry
    `SIM_LABEL=<prefix>` (the token this command made), so one page of one cluster answers with the count; else
    every page is read (a fleet of thousands joining makes that registration's work: ask once a second)."""
    deadline = time.monotonic() + timeout_s
    last = -1
    while True:
        try:
            approved = count_approved(obj, prefix, labelled)
        except ClientError as exc:
            # A fleet joining at once keeps registration busy (each join and login is its work) and nats-server
            # too (this command's own connection may time out): a slow answer or a refused connection is not the
            # joins failing, so ask again until --timeout.
            if exc.code not in (ErrorCode.TIMEOUT, ErrorCode.UNAVAILABLE):
                raise
            if time.monotonic() > deadline:
                raise Failure(
                    f"registration did not answer within {timeout_s:g}s ({exc.message}); {max(last, 0)} of "
                    f"{expected} clusters had joined; see `flotilla logs registration` and the sim log"
                ) from None
            if exc.code == ErrorCode.UNAVAILABLE:
                echo(f"  could not reach the bus ({exc.message}); asking again")
                time.sleep(1.0)  # sleep: a pause before connecting again, not a wait for a condition
            else:
                echo(f"  registration did not answer in time ({exc.message}); asking again")
            continue
        joined = approved
        if joined != last:
            echo(f"  {joined}/{expected} clusters joined")
            last = joined
        if joined >= expected:
            return joined
        if time.monotonic() > deadline:
            raise Failure(
                f"only {joined} of {expected} clusters joined within {timeout_s:g}s; "
                f"see `flotilla logs registration` and the sim log"
            )
        time.sleep(1.0)  # sleep: polling registration, which has no "N clusters joined" event to wait on


def count_approved(obj: CliContext, prefix: str, labelled: bool) -> int:
    """Approved clusters of this sim: by its label, one cluster's page and the total; else by name, every page."""
    if labelled:
        request = reg.ListClustersRequest(selector=f"{SIM_LABEL}={prefix}", states=[reg.ClusterState.APPROVED], limit=1)
        return call(obj, Service.REGISTRATION, "clusters.list", request, reg.ListClustersReply).total
    approved = list_all_clusters(obj, "", [reg.ClusterState.APPROVED])
    return sum(1 for c in approved if c.identity.name.startswith(f"{prefix}-"))
