"""Local fleet commands: `up`, `down`, `status` and `logs`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from flotilla_client import busauth, localfleet, localup, runfile, tracingenv
from flotilla_client.cli import supervision
from flotilla_client.cli.common import CliContext, Failure, echo, run, server_option
from flotilla_client.cli.output import Column, Listing, output_option, render_json, render_list, render_yaml
from flotilla_client.client import FlotillaClient
from flotilla_client.discovery import ServiceRecord
from flotilla_client.durations import format_duration
from flotilla_client.errors import FlotillaClientError
from flotilla_client.natsserver import MAX_CONNECTIONS
from flotilla_client.runfile import RunInfo
from flotilla_runtime.natsconn import redact

pass_cli = click.make_pass_decorator(CliContext)


@click.command()
@click.option("--port", type=click.IntRange(1, 65535), default=4222, show_default=True, help="NATS client port.")
@click.option(
    "--monitor-port",
    type=click.IntRange(0, 65535),
    default=8222,
    show_default=True,
    help="NATS HTTP monitoring port; 0 disables it.",
)
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds to wait for all five services.")
@click.option(
    "--tls", is_flag=True, help="TLS on the NATS client port, with a local CA made in <state>/auth/tls (needs openssl)."
)
@click.option(
    "--jaeger",
    is_flag=True,
    help="Start a local Jaeger (built by `make peer-bins`) and trace every service, sim and later command into it; "
    "prints the UI address.",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address nats-server listens on. 0.0.0.0: every address, so simulated fleets past ~28,000 connections "
    "can each use their own 127.0.0.x (`flotilla sim --bus-address`; docs/scale.md); the bus is then reachable "
    "from the network too (authentication stays on).",
)
@click.option(
    "--max-connections",
    type=click.IntRange(1),
    default=MAX_CONNECTIONS,
    show_default=True,
    help="nats-server's max_connections (every node and cluster agent holds one); the open-files limit is raised "
    "to match where allowed.",
)
@click.option(
    "--bus-servers",
    type=click.IntRange(1, localfleet.MAX_BUS_SERVERS),
    default=1,
    show_default=True,
    help="nats-servers to start, routed into one NATS cluster: each holds its own connections (up to its "
    "open-files limit), JetStream's streams live on the first; sims choose one with `flotilla sim --bus-server K` "
    "(docs/scale.md).",
)
@server_option
@pass_cli
def up(
    obj: CliContext, port: int, monitor_port: int, timeout: float, tls: bool, jaeger: bool, host: str,
    max_connections: int, bus_servers: int,
) -> None:  # fmt: skip
    """Start a local fleet: nats-server and the five services, kept running by a supervisor.

    A detached supervisor process starts nats-server with JetStream, then each service as its own
    process, and restarts any that dies (after 0.5s, doubling up to 30s while it keeps dying);
    `up` returns once all five answer $SRV.PING. `flotilla restart SERVICE` restarts one on purpose.

    Everything lives in the state folder (default .flotilla/ here): NATS data, each service's
    database, logs/<service>.log (and logs/supervisor.log) and run.json, which names the current
    pids with their restarts and last exits. With --server, an existing NATS is used instead.

    Tracing: the OTEL_* variables `up` runs with (e.g. OTEL_EXPORTER_OTLP_ENDPOINT) reach every service
    and are kept in run.json, so `flotilla sim` and later commands trace to the same place. --jaeger
    starts Jaeger all-in-one on free ports, points all of it there and prints the UI address; `down`
    stops it (the supervisor does not restart it).

    The bus has authentication on: each service connects as its own user with only its own subjects,
    the CLI as `admin` (passwords in <state>/auth/bus.json, mode 0600), and cluster agents with their
    cluster credential, checked by the registration service (NATS auth callout).

    \b
    Examples:
      flotilla up
      flotilla --state-dir /tmp/fleet up --port 4300 --monitor-port 0
      flotilla --server nats://127.0.0.1:4222 up
      flotilla up --jaeger
      flotilla up --host 0.0.0.0 --max-connections 250000   # a 100,000-node simulated fleet
      flotilla up --bus-servers 2   # two nats-servers in one NATS cluster, twice the connections
    """
    started = time.monotonic()
    options = localup.UpOptions(
        state_dir=obj.state_dir,
        port=port,
        monitor_port=monitor_port,
        server=obj.server_flag,
        timeout_s=timeout,
        tls=tls,
        jaeger=jaeger,
        host=host,
        max_connections=max_connections,
        bus_servers=bus_servers,
    )
    info = localup.up(options, echo)
    _print_summary(obj, info, time.monotonic() - started)


def _print_summary(obj: CliContext, info: RunInfo, elapsed: float) -> None:
    state = Path(info.state_dir)
    echo(f"\nFlotilla is up: {len(info.services)} services in {elapsed:.1f}s.")
    echo(
        f"  NATS          {redact(info.nats.url)}"
        + (f" (nats-server {info.nats.version})" if info.nats.version else "")
    )
    for more in info.more_nats:
        echo(f"  {more.name:<13} {redact(more.url)} (routed to the first; `flotilla sim --bus-server K`)")
    if busauth.load(state) is not None:
        echo(f"  credentials   {busauth.auth_path(state)} (users per service; the CLI is admin)")
    if info.nats.monitor_url:
        echo(f"  monitoring    {info.nats.monitor_url}")
    if info.jaeger is not None:
        echo(f"  Jaeger UI     {info.jaeger.ui_url} (traces of every command: flotilla --trace ...)")
    elif endpoint := next((info.tracing[k] for k in tracingenv.ENDPOINTS if info.tracing.get(k)), ""):
        echo(f"  traces        OTLP to {endpoint}")
    echo(f"  state folder  {state}")
    echo(f"  run file      {runfile.run_file(state)}")
    echo(f"  logs          {state / 'logs'}/<service>.log")
    echo("Try next:")
    for command in ("status", "events --follow", "logs registration", "down"):
        echo(f"  {obj.hint(command)}")


@click.command()
@click.option("--timeout", type=float, default=15.0, show_default=True, help="Seconds to wait before SIGKILL.")
@pass_cli
def down(obj: CliContext, timeout: float) -> None:
    """Stop the local fleet, leaving no process behind.

    The supervisor stops first, so nothing is restarted: services and sims get SIGTERM (they drain
    and flush), stragglers SIGKILL after --timeout, then nats-server stops. Data stays in the state
    folder for the next `up`.

    \b
    Example:
      flotilla down
    """
    if not localfleet.down(obj.state_dir, timeout, echo):
        echo(f"nothing is running from {obj.state_dir.resolve()} (no run.json there)")
        return
    echo("the local fleet is down; no process is left")


def _status_row(record: ServiceRecord) -> dict[str, Any]:
    return {
        "name": record.name,
        "version": record.version,
        "id": record.id,
        "started": record.started,
        "uptime_s": round(record.uptime_s, 1) if record.uptime_s is not None else None,
        "requests": record.requests,
        "errors": record.errors,
        "health": record.health,
        "endpoints": record.endpoints,
        "metadata": record.metadata,
    }


STATUS_COLUMNS = (
    Column("SERVICE", "name"),
    Column("VERSION", "version"),
    Column("ID", "id"),
    Column("UPTIME", lambda r: format_duration(r["uptime_s"]) if r["uptime_s"] is not None else None),
    Column("REQUESTS", "requests"),
    Column("ERRORS", "errors"),
    Column("HEALTH", "health"),
    Column("STARTED", "started", wide=True),
    Column("ENDPOINTS", lambda r: len(r["endpoints"]), wide=True),
)
SERVICE_LISTING = Listing("service", "services", STATUS_COLUMNS, lambda r: f"{r['name']}/{r['id']}")


@click.command()
@output_option()
@click.option("--timeout", type=float, default=1.0, show_default=True, help="Seconds to wait for replies.")
@server_option
@pass_cli
def status(obj: CliContext, output: str, timeout: float) -> None:
    """List running services: version, id, uptime, requests, errors; and the local fleet's processes.

    Services are found by NATS service discovery ($SRV.PING and $SRV.STATS), so this works
    against any Flotilla NATS, local or not. When a local fleet runs from --state-dir, a second
    table shows each of its processes as its supervisor keeps them: pid, state, restarts after
    crashes, restarts asked for (`flotilla restart`) and the last exit. JSON and YAML output are
    {"services": [...], "local": {...} or null}; -o name prints service/NAME/ID, one instance a line.

    \b
    Examples:
      flotilla status
      flotilla status -o json
      flotilla --server nats://nats.example:4222 status
    """
    url = obj.server_url()
    info = supervision.local_info(obj)
    local = supervision.local_view(info) if info is not None else None

    async def discover() -> list[ServiceRecord]:
        async with FlotillaClient(url) as client:
            return await client.discover(timeout=timeout)

    try:
        rows = [_status_row(r) for r in run(discover)]
    except FlotillaClientError:
        if local is not None and output in ("table", "wide"):
            supervision.print_local(local)  # what runs locally, and how it last ended, helps most now
        raise
    if output in ("json", "yaml"):
        both = {"services": rows, "local": local}
        echo(render_json(both) if output == "json" else render_yaml(both))
    if output == "name" and rows:
        echo(render_list(rows, output, SERVICE_LISTING))
    if output in ("table", "wide") and rows:
        echo(f"{len(rows)} service instance(s) on {redact(url)}")
        echo(render_list(rows, output, SERVICE_LISTING))
    if output in ("table", "wide") and local is not None:
        supervision.print_local(local)
    if not rows:
        raise Failure(f"no service answered $SRV.PING on {redact(url)}; start the fleet with `{obj.hint('up')}`")


@click.command()
@click.argument("service", type=click.Choice(localfleet.LOG_NAMES), metavar="SERVICE")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until Ctrl-C.")
@click.option("-n", "--lines", type=click.IntRange(0), default=20, show_default=True, help="Lines to show first.")
@pass_cli
def logs(obj: CliContext, service: str, follow: bool, lines: int) -> None:
    """Show the log of a local service (or of nats-server, or of the supervisor).

    \b
    Examples:
      flotilla logs registration
      flotilla logs upgrade-orchestrator -n 100
      flotilla logs heartbeat --follow
    """
    path = localfleet.log_path(obj.state_dir.resolve(), service)
    if not path.exists():
        raise Failure(f"no log for {service} at {path}; has `{obj.hint('up')}` run with this state folder?")
    for line in localfleet.tail(path, lines):
        echo(line)
    if follow:
        try:
            _follow(path)
        except KeyboardInterrupt:
            return


def _follow(path: Path) -> None:
    with open(path, "rb") as file:
        file.seek(0, 2)
        partial = b""
        while True:
            chunk = file.read()
            if not chunk:
                if path.exists() and path.stat().st_size < file.tell():
                    file.seek(0)  # truncated or replaced: start over
                time.sleep(0.2)
                continue
            partial += chunk
            *complete, partial = partial.split(b"\n")
            for line in complete:
                echo(line.decode("utf-8", "replace"))
