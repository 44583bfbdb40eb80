"""`flotilla up`: check the ports, write the nats-server configuration, start the supervisor, wait for the five."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from flotilla_client import busauth, jaeger, openfiles, procs, runfile, tracingenv, users
from flotilla_client.client import FlotillaClient
from flotilla_client.errors import LocalFleetError
from flotilla_client.localfleet import (
    SERVICES,
    SUPERVISOR,
    SUPERVISOR_MODULE,
    Progress,
    bus_server_dir,
    bus_server_name,
    check_not_running,
    log_path,
    stop_everything,
    tail,
)
from flotilla_client.natsserver import (
    MAX_CONNECTIONS,
    ClusterMember,
    NatsServer,
    NatsServerError,
    client_host,
    find_nats_server,
    free_port,
    port_open,
)
from flotilla_client.runfile import NatsEntry, RunInfo
from flotilla_contracts import permissions
from flotilla_runtime.integrity import private_tree
from flotilla_runtime.natsconn import CA_ENV


@dataclass
class UpOptions:
    state_dir: Path
    port: int = 4222
    monitor_port: int = 8222
    server: str | None = None  # an existing NATS to use instead of starting one
    timeout_s: float = 30.0
    host: str = "127.0.0.1"  # where nats-server listens: 0.0.0.0 lets sims spread over 127.0.0.x (docs/scale.md)
    max_connections: int = MAX_CONNECTIONS  # nats-server's max_connections
    tls: bool = False  # TLS on the client port, with a local CA (clients get FLOTILLA_NATS_CA)
    jaeger: bool = False  # start a local Jaeger and trace everything into it
    bus_servers: int = 1  # nats-servers in one NATS cluster: past one server's open-files limit (docs/scale.md)


def _prepare_nats(opts: UpOptions, progress: Progress) -> tuple[NatsEntry, list[NatsEntry]]:
    """Check the ports and write the configuration of each nats-server the supervisor starts (pid 0: ours): the
    first, and with `bus_servers` > 1 the others of its NATS cluster."""
    if opts.server:
        if opts.bus_servers > 1:
            raise LocalFleetError("--bus-servers starts nats-servers; it cannot be used with --server")
        progress(f"using the NATS server at {opts.server}")
        return NatsEntry(url=opts.server), []
    if port_open(client_host(opts.host), opts.port):
        raise LocalFleetError(
            f"port {opts.port} on {opts.host} is already in use (another NATS or fleet?); choose another with "
            f"--port, or use that server with --server nats://{client_host(opts.host)}:{opts.port}"
        )
    if opts.monitor_port and port_open(client_host(opts.host), opts.monitor_port):
        raise LocalFleetError(
            f"monitoring port {opts.monitor_port} on {opts.host} is already in use; "
            "choose another with --monitor-port (0 disables monitoring)"
        )
    # Authentication on: a user per service, for the CLI and per person (`flotilla user add`), cluster agents
    # through the callout; in a file of its own, rewritten and reloaded when people are added or removed.
    auth = busauth.load_or_create(opts.state_dir)
    auth_file = users.write_auth_config(opts.state_dir, auth)  # one file for every server: `user add` reloads it
    websocket_tls = config = ""
    if opts.tls:
        try:
            ca, cert, key = busauth.make_tls(opts.state_dir, client_host(opts.host))
        except busauth.TlsError as exc:
            raise LocalFleetError(str(exc)) from None
        config = "\n" + busauth.tls_config(cert, key)
        websocket_tls = busauth.tls_config(cert, key)
        os.environ[CA_ENV] = str(ca)  # for this process's own clients, and inherited by the services
    try:
        find_nats_server()
    except NatsServerError as exc:
        raise LocalFleetError(str(exc)) from None
    entries = []
    for index, member in enumerate(_cluster(opts.state_dir, opts.bus_servers), start=1):
        first = index == 1
        monitor_port = opts.monitor_port if first or not opts.monitor_port else free_port(opts.host)
        server = NatsServer(
            state_dir=bus_server_dir(opts.state_dir, index),
            port=opts.port if first else free_port(opts.host),
            host=opts.host,
            monitor_port=monitor_port,
            log_file=log_path(opts.state_dir, bus_server_name(index)),
            # relative to this server's folder (nats-server resolves includes from the including file's)
            extra_config=f'include "{os.path.relpath(auth_file, bus_server_dir(opts.state_dir, index))}"' + config,
            # the dashboard's (`flotilla dashboard`), same users as the port; on the first server only
            websocket_port=free_port(opts.host) if first else 0,
            websocket_tls=websocket_tls,
            max_connections=opts.max_connections,
            cluster=member,
        )
        server.write_config()
        what = "with JetStream" if server.stores else "(JetStream on the first)"
        progress(f"starting {bus_server_name(index)} {what} in {server.state_dir} on {server.url}")
        url = server.url.replace("nats://", "tls://") if opts.tls else server.url
        entries.append(
            NatsEntry(
                url=busauth.admin_url(url, auth),
                name=bus_server_name(index),
                pid=0,
                port=server.port,
                monitor_url=f"http://{client_host(opts.host)}:{monitor_port}" if monitor_port else "",
                websocket_url=server.websocket_url,
                log=str(server.log_file),
                config=str(server.config_path),
            )
        )
    return entries[0], entries[1:]


def _cluster(state_dir: Path, servers: int) -> list[ClusterMember | None]:
    """Each server's route port, peers and password: [None] for one server (no cluster, today's configuration).
    JetStream's data differs between one server (standalone) and a cluster (a meta group): a state folder keeps
    the layout it was made with (`flotilla down`, then remove <state>/nats to change it)."""
    standalone = not (bus_server_dir(state_dir, 1) / "jetstream" / permissions.SYSTEM_ACCOUNT / "_js_").exists()
    made = (bus_server_dir(state_dir, 1) / "jetstream").exists()
    if made and standalone != (servers == 1):
        was = "one nats-server" if standalone else "several (--bus-servers)"
        raise LocalFleetError(
            f"{state_dir} holds JetStream data made with {was}; use the same --bus-servers, or another "
            f"--state-dir, or remove {bus_server_dir(state_dir, 1)} (its streams are lost) to change it"
        )
    if servers == 1:
        return [None]
    ports = [free_port() for _ in range(servers)]
    password = secrets.token_urlsafe(24)
    return [
        ClusterMember(port, [p for p in ports if p != port], password, stores=index == 0)
        for index, port in enumerate(ports)
    ]


def _start_supervisor(state_dir: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", SUPERVISOR_MODULE, "--state-dir", str(state_dir)]
    return procs.spawn(command, log_path(state_dir, SUPERVISOR), os.environ, cwd=state_dir)


def _crashed(info: RunInfo) -> tuple[str, str] | None:
    """(name, how it ended) of the first process that exited since `up` began, if any."""
    entries = [(n.name, n.supervision) for n in runfile.bus_servers(info)]
    entries += [(s.name, s.supervision) for s in info.services]
    return next(((name, sup.last_exit.status) for name, sup in entries if sup.last_exit is not None), None)


def _wait_started(state_dir: Path, supervisor: subprocess.Popen[bytes], deadline: float, progress: Progress) -> RunInfo:
    """Until the supervisor has recorded itself, nats-server listening and a pid for each service."""
    while True:
        info = runfile.load(state_dir)
        if info is None:
            raise LocalFleetError(f"{runfile.run_file(state_dir)} disappeared while starting")
        if supervisor.poll() is not None:
            _fail(info, SUPERVISOR, f"the supervisor exited with code {supervisor.returncode} at start", progress)
        crashed = _crashed(info)
        if crashed:
            _fail(info, crashed[0], f"{crashed[0]} exited with {crashed[1]} at start", progress)
        if info.supervisor and len(info.services) == len(SERVICES) and all(s.pid for s in info.services):
            return info
        if time.monotonic() > deadline:
            _fail(info, SUPERVISOR, "the supervisor did not start the services in time", progress)
        time.sleep(0.05)


async def _wait_ready(
    state_dir: Path, info: RunInfo, timeout_s: float, progress: Progress
) -> tuple[str, dict[str, str]]:
    """Until every service answers `$SRV.PING` with its instance id; (server version, service versions)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    ready: dict[str, str] = {}
    async with FlotillaClient(info.nats.url, name="flotilla-up") as client:
        while len(ready) < len(SERVICES):
            info = runfile.load(state_dir) or info
            crashed = _crashed(info)
            if crashed:
                _fail(info, crashed[0], f"{crashed[0]} exited with {crashed[1]} at start", progress)
            expected = {s.name: s.instance_id for s in info.services}
            if loop.time() > end:
                missing = sorted(set(expected) - set(ready))
                reason = f"{', '.join(missing)} did not answer $SRV.PING within {timeout_s:g}s"
                _fail(info, missing[0], reason, progress)
            for record in await client.discover(timeout=0.5, expect=len(expected)):
                if expected.get(record.name) == record.id and record.name not in ready:
                    ready[record.name] = record.version
                    progress(f"  {record.name:<22} {record.version:<8} ready (id {record.id})")
        return client.server_version, ready


def _fail(info: RunInfo, name: str, reason: str, progress: Progress) -> None:
    path = log_path(Path(info.state_dir), name)
    progress(f"{reason}; last lines of {path}:")
    for line in tail(path, 15) or ["(the log is empty)"]:
        progress(f"  | {line}")
    raise LocalFleetError(f"{reason}; everything started was stopped (log: {path})")


def up(opts: UpOptions, progress: Progress) -> RunInfo:
    """Start the supervisor, which starts nats-server (unless `opts.server`) and the five services and keeps
    them running; returns once all five answer. On any failure everything is stopped again."""
    state_dir = opts.state_dir.resolve()
    opts.state_dir = state_dir
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_not_running(state_dir, progress)
    if changed := private_tree(state_dir):  # left readable by an older version: secrets and state are private
        progress(f"made {changed} files and folders under {state_dir} private to their owner (0600, 0700)")
    if opts.server:
        asyncio.run(_check_reachable(opts.server))
    else:
        # Every bus connection is a descriptor in nats-server (and in a sim): raised here, inherited by the
        # supervisor and all it starts (nats-server itself raises its soft limit to the hard one).
        limits = openfiles.raise_open_files(opts.max_connections + 4096)
        if not limits.enough:
            progress(f"note: {limits.advice()}")
    started_at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    first, more = _prepare_nats(opts, progress)
    info = RunInfo(state_dir=str(state_dir), started_at=started_at, nats=first, more_nats=more)
    deadline = time.monotonic() + opts.timeout_s + 10.0  # nats-server has had 10 s to listen
    try:
        if opts.jaeger:
            info.jaeger = jaeger.start(
                state_dir / "jaeger", log_path(state_dir, "jaeger").parent, host=client_host(opts.host)
            )
            os.environ.update(jaeger.tracing_env(info.jaeger))  # the supervisor, services and sims inherit it
            progress(f"started Jaeger: UI {info.jaeger.ui_url}, OTLP/HTTP {info.jaeger.otlp_url}")
        # What everything started here traces with, kept for `flotilla sim` and later commands.
        info.tracing = tracingenv.settings_of(os.environ)
        runfile.save(state_dir, info)
        supervisor = _start_supervisor(state_dir)
        progress(f"starting {len(SERVICES)} services under a supervisor (logs in {state_dir / 'logs'}):")
        info = _wait_started(state_dir, supervisor, deadline, progress)
        # --timeout is for the services, counted from their start (as when `up` started them itself).
        server_version, versions = asyncio.run(_wait_ready(state_dir, info, opts.timeout_s, progress))

        def mark_ready(info: RunInfo) -> None:
            info.ready, info.nats.version = True, server_version
            for entry in info.services:
                entry.version = versions.get(entry.name, entry.version)

        return runfile.update(state_dir, mark_ready) or info
    except BaseException:
        stop_everything(state_dir, 10.0, lambda _line: None)
        runfile.remove(state_dir)
        raise


async def _check_reachable(url: str) -> None:
    async with FlotillaClient(url, name="flotilla-up"):
        pass
