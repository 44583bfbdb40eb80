"""`flotilla restart`, and the local fleet's supervision view (restarts, last exits) that `flotilla status` adds."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click

from flotilla_client import localfleet, procs, runfile
from flotilla_client.cli.common import CliContext, Failure, echo, run
from flotilla_client.cli.output import Column, render
from flotilla_client.client import FlotillaClient
from flotilla_client.durations import format_duration
from flotilla_client.errors import FlotillaClientError, LocalFleetError
from flotilla_client.runfile import RunInfo, Supervision

pass_cli = click.make_pass_decorator(CliContext)


def _ago(stamp: str, now: datetime) -> float | None:
    try:
        return max((now - datetime.fromisoformat(stamp.replace("Z", "+00:00"))).total_seconds(), 0.0)
    except ValueError:
        return None


def _row(name: str, pid: int | None, marker: str, sup: Supervision, now: datetime) -> dict[str, Any]:
    state = str(sup.state)
    if pid and not procs.alive(pid, marker):
        state = "exited"  # the supervisor has not recorded it yet, or it is not running
    last = sup.last_exit
    return {
        "name": name,
        "pid": pid or None,
        "state": state,
        "uptime_s": _ago(sup.started_at, now) if pid and sup.started_at else None,
        "restarts": sup.restarts,
        "requested_restarts": sup.requested_restarts,
        "last_exit": None
        if last is None
        else {"pid": last.pid, "status": last.status, "at": last.at, "requested": last.requested},
        "next_start_at": sup.next_start_at or None,
    }


def local_view(info: RunInfo) -> dict[str, Any]:
    """The supervisor and every process it keeps, from run.json (checked against /proc)."""
    now = datetime.now(UTC)
    state_dir = Path(info.state_dir)
    rows = []
    if info.nats.pid is not None:
        rows += [_row(n.name, n.pid, n.config, n.supervision, now) for n in runfile.bus_servers(info)]
    rows += [_row(s.name, s.pid, s.module, s.supervision, now) for s in info.services]
    rows += [_row(f"sim:{s.prefix}", s.pid, localfleet.SIM_MODULE, s.supervision, now) for s in info.sims]
    sup = info.supervisor
    alive = sup is not None and procs.alive(sup.pid, localfleet.supervisor_marker(state_dir))
    return {
        "state_dir": str(state_dir),
        "supervisor": {"pid": sup.pid if sup else None, "running": alive, "log": sup.log if sup else None},
        "processes": rows,
    }


def local_info(obj: CliContext) -> RunInfo | None:
    """The run file of --state-dir, when the fleet it records is the one this command talks to."""
    try:
        info = runfile.load(obj.state_dir.resolve())
    except LocalFleetError:
        return None
    if info is None or obj.server_flag is None:
        return info
    given, recorded = urlsplit(obj.server_flag), urlsplit(info.nats.url)
    return info if (given.hostname, given.port) == (recorded.hostname, recorded.port) else None


def _last_exit(row: dict[str, Any]) -> str | None:
    last = row["last_exit"]
    if last is None:
        return None
    ago = _ago(last["at"], datetime.now(UTC))
    when = f" {format_duration(ago)} ago" if ago is not None else ""
    return f"{last['status']}{' (asked)' if last['requested'] else ''}{when}"


LOCAL_COLUMNS = (
    Column("PROCESS", "name"),
    Column("PID", "pid"),
    Column("STATE", "state"),
    Column("UPTIME", lambda r: format_duration(r["uptime_s"]) if r["uptime_s"] is not None else None),
    Column("RESTARTS", "restarts"),
    Column("ASKED", "requested_restarts"),
    Column("LAST EXIT", _last_exit),
)


def print_local(view: dict[str, Any]) -> None:
    sup = view["supervisor"]
    if sup["running"]:
        head = f"supervisor pid {sup['pid']} keeps them running"
    else:
        head = "its supervisor is NOT running: nothing is restarted (`flotilla down`, then `flotilla up`)"
    echo(f"\nlocal fleet in {view['state_dir']}: {head}")
    echo(render(view["processes"], "table", LOCAL_COLUMNS))


@click.command()
@click.argument("name", metavar="SERVICE")
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds to wait for the new process.")
@pass_cli
def restart(obj: CliContext, name: str, timeout: float) -> None:
    """Restart one process of the local fleet on purpose, through its supervisor.

    SERVICE is one of registration, heartbeat, scheduler, upgrade-orchestrator, node-agent,
    nats-server, or sim:PREFIX (plain `sim` when one simulated fleet runs). With `up --bus-servers N`,
    nats-server restarts every nats-server in turn (the next once the last listens again) and
    nats-server-K the K-th alone. The process gets
    SIGTERM (SIGKILL after 10s) and the supervisor starts it again at once, with the same state
    (nats-server: same port, configuration and JetStream folder). It is counted apart from
    crashes (ASKED in `flotilla status`). Waits until the new process is up: a service until it
    answers $SRV.PING, nats-server until the services answer through it again.

    \b
    Examples:
      flotilla restart scheduler
      flotilla restart nats-server
      flotilla restart sim:lab --timeout 60
    """
    started = time.monotonic()
    reply = localfleet.restart(obj.state_dir, name, timeout)
    echo(f"{reply.name}: pid {reply.old_pid or '-'} stopped, pid {reply.pid} started (not counted as a crash)")
    if reply.instance_id:
        left = timeout - (time.monotonic() - started)
        run(lambda: until_answering(obj.server_url(), {reply.name: reply.instance_id}, left))
        echo(f"{reply.name} answers $SRV.PING as instance {reply.instance_id}")
    elif reply.name == localfleet.NATS_SERVER:
        info = runfile.load(obj.state_dir.resolve())
        expected = {s.name: s.instance_id for s in info.services} if info else {}
        run(lambda: until_answering(obj.server_url(), expected, timeout - (time.monotonic() - started)))
        echo(f"nats-server accepts connections again; {len(expected)} services answer $SRV.PING through it")
    echo(f"done in {time.monotonic() - started:.1f}s")


async def until_answering(url: str, expected: dict[str, str], timeout_s: float) -> None:
    """Until each named service answers $SRV.PING with the given instance id (connecting again after an error)."""
    deadline = time.monotonic() + timeout_s
    last_error = ""
    while True:
        try:
            async with FlotillaClient(url, name="flotilla-restart") as client:
                while True:
                    answering = {r.name: r.id for r in await client.discover(timeout=0.5)}
                    missing = sorted(name for name, instance in expected.items() if answering.get(name) != instance)
                    if not missing:
                        return
                    last_error = f"{', '.join(missing)} not answering yet"
                    if time.monotonic() > deadline:
                        break
        except FlotillaClientError as exc:  # nats-server still starting
            last_error = str(exc)
            await asyncio.sleep(0.2)
        if time.monotonic() > deadline:
            raise Failure(f"the new process did not come up within {timeout_s:g}s ({last_error})")
