"""`flotilla up` and `flotilla down`: nats-server and the five services as detached processes in one state folder."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from flotilla_client import busauth, procs, runfile
from flotilla_client.client import FlotillaClient
from flotilla_client.errors import LocalFleetError
from flotilla_client.natsserver import NatsServer, NatsServerError, free_port, port_open
from flotilla_client.runfile import NatsEntry, RunInfo, ServiceEntry, SimEntry
from flotilla_contracts.subjects import Service
from flotilla_runtime.natsconn import CA_ENV
from flotilla_runtime.settings import env_prefix

Progress = Callable[[str], None]
SERVICES: tuple[Service, ...] = tuple(Service)
NATS_SERVER = "nats-server"
TAIL_BYTES = 1024 * 1024
LOG_NAMES: tuple[str, ...] = (*(s.value for s in SERVICES), NATS_SERVER)


def module_of(service: Service) -> str:
    return "flotilla_" + service.value.replace("-", "_")


def log_path(state_dir: Path, name: str) -> Path:
    return state_dir / "logs" / f"{name}.log"


def tail(path: Path, lines: int) -> list[str]:
    """The last `lines` lines of a text file (empty when it does not exist)."""
    try:
        with open(path, "rb") as file:
            size = file.seek(0, os.SEEK_END)
            file.seek(max(size - TAIL_BYTES, 0))
            text = file.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return []
    if size > TAIL_BYTES:
        text = text.partition("\n")[2]  # drop the partial first line
    return text.splitlines()[-lines:] if lines > 0 else []


SIM_MODULE = "flotilla_node_agent.sim"
SIM_URL_ENV = "FLOTILLA_SIM_NATS_URL"  # the sim's NATS URL with credentials (see flotilla_node_agent.sim)


def tracked(info: RunInfo) -> tuple[list[procs.Tracked], list[procs.Tracked]]:
    """(simulated fleets and services, nats-server) recorded in a run file, nats-server only when we started it."""
    sims = [procs.Tracked(f"sim {s.prefix}", s.pid, SIM_MODULE) for s in info.sims]
    services = [procs.Tracked(s.name, s.pid, s.module) for s in info.services]
    nats = [procs.Tracked(NATS_SERVER, info.nats.pid, info.nats.config)] if info.nats.pid else []
    return sims + services, nats


def start_sim(state_dir: Path, args: list[str], *, prefix: str, clusters: int, nodes: int) -> SimEntry:
    """Start a simulated fleet as its own detached process, recorded in run.json so `down` stops it."""
    state_dir = state_dir.resolve()
    info = runfile.load(state_dir)
    if info is None:
        raise LocalFleetError(f"no local fleet runs from {state_dir}; start one with `flotilla up` first")
    if any(s.prefix == prefix and procs.alive(s.pid, SIM_MODULE) for s in info.sims):
        raise LocalFleetError(f"a simulated fleet with prefix {prefix!r} already runs; choose another --prefix")
    sim_dir = state_dir / f"sim-{prefix}"
    log = log_path(state_dir, f"sim-{prefix}")
    # The admin URL goes in the environment, not on the command line (where `ps` would show its password).
    command = [sys.executable, "-m", SIM_MODULE, "--state-dir", str(sim_dir), "--prefix", prefix, *args]
    env = {**os.environ, SIM_URL_ENV: info.nats.url}
    ca = busauth.tls_ca(state_dir)
    if ca is not None and info.nats.url.startswith("tls://"):
        env[CA_ENV] = str(ca)
    process = procs.spawn(command, log, env, cwd=state_dir)
    entry = SimEntry(prefix=prefix, pid=process.pid, clusters=clusters, nodes=nodes, log=str(log),
                     state_dir=str(sim_dir))  # fmt: skip
    info.sims = [s for s in info.sims if s.prefix != prefix] + [entry]
    runfile.save(state_dir, info)
    return entry


def leftover_markers(state_dir: Path) -> list[str]:
    """Strings only our own processes carry: the nats-server config path, each service's state variable."""
    markers = [str(state_dir / "nats" / "nats-server.conf"), f"--state-dir {state_dir / 'sim-'}"]
    markers += [f"{env_prefix(s.value)}STATE_DIR={state_dir / s.value}" for s in SERVICES]
    return markers


def running(state_dir: Path) -> bool:
    """True when a fleet started from this folder still has a live process."""
    info = runfile.load(state_dir)
    if info is None:
        return False
    services, nats = tracked(info)
    return any(procs.alive(t.pid, t.marker) for t in services + nats)


def check_not_running(state_dir: Path, progress: Progress) -> None:
    """Refuse when a fleet from this folder still runs; remove a run file whose processes are all gone."""
    info = runfile.load(state_dir)
    if info is None:
        return
    services, nats = tracked(info)
    running = [t for t in services + nats if procs.alive(t.pid, t.marker)]
    if running:
        names = ", ".join(f"{t.label} (pid {t.pid})" for t in running)
        raise LocalFleetError(
            f"a local fleet is already running from {state_dir} ({names}); stop it with `flotilla down` "
            "or use another --state-dir"
        )
    runfile.remove(state_dir)
    progress(f"removed a stale {runfile.run_file(state_dir)} (none of its processes is running)")


@dataclass
class UpOptions:
    state_dir: Path
    port: int = 4222
    monitor_port: int = 8222
    server: str | None = None  # an existing NATS to use instead of starting one
    timeout_s: float = 30.0
    host: str = "127.0.0.1"
    tls: bool = False  # TLS on the client port, with a local CA (clients get FLOTILLA_NATS_CA)


def _start_nats(opts: UpOptions, progress: Progress) -> tuple[NatsEntry, subprocess.Popen[bytes] | None]:
    if opts.server:
        progress(f"using the NATS server at {opts.server}")
        return NatsEntry(url=opts.server), None
    if port_open(opts.host, opts.port):
        raise LocalFleetError(
            f"port {opts.port} on {opts.host} is already in use (another NATS or fleet?); choose another with "
            f"--port, or use that server with --server nats://{opts.host}:{opts.port}"
        )
    if opts.monitor_port and port_open(opts.host, opts.monitor_port):
        raise LocalFleetError(
            f"monitoring port {opts.monitor_port} on {opts.host} is already in use; "
            "choose another with --monitor-port (0 disables monitoring)"
        )
    # Authentication on: a user per service and for the CLI, cluster agents through the callout.
    auth = busauth.load_or_create(opts.state_dir)
    config = busauth.server_config(auth)
    if opts.tls:
        try:
            ca, cert, key = busauth.make_tls(opts.state_dir, opts.host)
        except busauth.TlsError as exc:
            raise LocalFleetError(str(exc)) from None
        config += "\n" + busauth.tls_config(cert, key)
        os.environ[CA_ENV] = str(ca)  # for this process's own clients, and inherited by the services
    server = NatsServer(
        state_dir=opts.state_dir / "nats",
        port=opts.port,
        host=opts.host,
        monitor_port=opts.monitor_port,
        log_file=log_path(opts.state_dir, NATS_SERVER),
        extra_config=config,
    )
    progress(f"starting nats-server with JetStream in {server.state_dir} on {server.url}")
    try:
        server.start(detach=True)
    except NatsServerError as exc:
        raise LocalFleetError(str(exc)) from None
    assert server.process is not None
    monitor = f"http://{opts.host}:{opts.monitor_port}" if opts.monitor_port else ""
    url = server.url.replace("nats://", "tls://") if opts.tls else server.url
    entry = NatsEntry(
        url=busauth.admin_url(url, auth),
        pid=server.process.pid,
        port=opts.port,
        monitor_url=monitor,
        log=str(server.log_file),
        config=str(server.config_path),
    )
    return entry, server.process


def start_service(
    service: Service, state_dir: Path, nats_url: str, settings: Mapping[str, str] | None = None
) -> tuple[ServiceEntry, subprocess.Popen[bytes]]:
    """One service as a detached process with its state under `state_dir/<service>`; `settings` are extra
    FLOTILLA_<SERVICE>_* values by field name (e.g. {"auto_approve_selector": "env=dev"})."""
    prefix = env_prefix(service.value)
    auth = busauth.load(state_dir)
    nats_url = busauth.service_url(busauth.without_user(nats_url) if auth else nats_url, auth, service)
    extra = dict(settings or {})
    if auth is not None and service is Service.REGISTRATION:
        extra.setdefault("callout_issuer_seed", auth.callout_seed)
    port = free_port()
    service_dir = state_dir / service.value
    service_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    ca = busauth.tls_ca(state_dir)
    if ca is not None and nats_url.startswith("tls://"):
        env[CA_ENV] = str(ca)
    env.update(
        {
            "FLOTILLA_NATS_URL": nats_url,
            f"{prefix}NATS_URL": nats_url,
            f"{prefix}STATE_DIR": str(service_dir),
            f"{prefix}HTTP_PORT": str(port),
            f"{prefix}LOG_FORMAT": "json",
            f"{prefix}INSTANCE_ID": uuid.uuid4().hex[:12],
            "PYTHONUNBUFFERED": "1",
            **{prefix + key.upper(): value for key, value in extra.items()},
        }
    )
    log = log_path(state_dir, service.value)
    process = procs.spawn([sys.executable, "-m", module_of(service)], log, env, cwd=service_dir)
    entry = ServiceEntry(
        name=service.value,
        module=module_of(service),
        pid=process.pid,
        http_port=port,
        health_url=f"http://127.0.0.1:{port}",
        log=str(log),
        state_dir=str(service_dir),
        instance_id=env[f"{prefix}INSTANCE_ID"],
    )
    return entry, process


async def _wait_ready(
    info: RunInfo, children: dict[str, subprocess.Popen[bytes]], timeout_s: float, progress: Progress
) -> None:
    """Until every service we started answers `$SRV.PING` with its instance id; fail fast when one exits."""
    expected = {s.name: s.instance_id for s in info.services}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    async with FlotillaClient(info.nats.url, name="flotilla-up") as client:
        info.nats.version = client.server_version
        ready: dict[str, str] = {}
        while len(ready) < len(expected):
            for name, child in children.items():
                if child.poll() is not None and name not in ready:
                    _fail(info, name, f"{name} exited with code {child.returncode} at start", progress)
            if loop.time() > deadline:
                missing = sorted(set(expected) - set(ready))
                reason = f"{', '.join(missing)} did not answer $SRV.PING within {timeout_s:g}s"
                _fail(info, missing[0], reason, progress)
            for record in await client.discover(timeout=0.5, expect=len(expected)):
                if expected.get(record.name) == record.id and record.name not in ready:
                    ready[record.name] = record.version
                    progress(f"  {record.name:<22} {record.version:<8} ready (id {record.id})")
        for entry in info.services:
            entry.version = ready[entry.name]


def _fail(info: RunInfo, name: str, reason: str, progress: Progress) -> None:
    path = log_path(Path(info.state_dir), name)
    progress(f"{reason}; last lines of {path}:")
    for line in tail(path, 15) or ["(the log is empty)"]:
        progress(f"  | {line}")
    raise LocalFleetError(f"{reason}; everything started was stopped (log: {path})")


def up(opts: UpOptions, progress: Progress) -> RunInfo:
    """Start nats-server (unless `opts.server`) and the five services; on any failure stop them all again."""
    state_dir = opts.state_dir.resolve()
    opts.state_dir = state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    check_not_running(state_dir, progress)
    if opts.server:
        asyncio.run(_check_reachable(opts.server))
    nats_entry, _nats = _start_nats(opts, progress)
    started_at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    info = RunInfo(state_dir=str(state_dir), started_at=started_at, nats=nats_entry)
    children: dict[str, subprocess.Popen[bytes]] = {}
    try:
        runfile.save(state_dir, info)
        progress(f"starting {len(SERVICES)} services (logs in {state_dir / 'logs'}):")
        for service in SERVICES:
            entry, child = start_service(service, state_dir, info.nats.url)
            info.services.append(entry)
            children[service.value] = child
        runfile.save(state_dir, info)
        asyncio.run(_wait_ready(info, children, opts.timeout_s, progress))
        info.ready = True
        runfile.save(state_dir, info)
        return info
    except BaseException:
        stop_all(info, 10.0, lambda _line: None)
        runfile.remove(state_dir)
        raise


async def _check_reachable(url: str) -> None:
    async with FlotillaClient(url, name="flotilla-up"):
        pass


def stop_all(info: RunInfo, timeout_s: float, progress: Progress) -> list[procs.Tracked]:
    """Services first (they flush their outboxes into NATS), then nats-server; returns what is still alive."""
    services, nats = tracked(info)
    left: list[procs.Tracked] = []
    for group in (services, nats):
        killed, alive = procs.stop(group, timeout_s)
        for t in group:
            how = "killed (did not stop in time)" if t in killed else "stopped"
            progress(f"  {t.label:<22} pid {t.pid:<8} {'STILL RUNNING' if t in alive else how}")
        left += alive
    return left


def down(state_dir: Path, timeout_s: float, progress: Progress) -> bool:
    """Stop what `up` started from `state_dir`; False when nothing was running. Raises if a process survives."""
    state_dir = state_dir.resolve()
    info = runfile.load(state_dir)
    if info is not None:
        progress(f"stopping the local fleet in {state_dir}:")
        left = stop_all(info, timeout_s, progress)
        if left:
            names = ", ".join(f"{t.label} (pid {t.pid})" for t in left)
            raise LocalFleetError(f"could not stop {names}; {runfile.run_file(state_dir)} is kept")
        runfile.remove(state_dir)
    leftovers = procs.find_by_markers(leftover_markers(state_dir))
    if leftovers:
        progress(f"found {len(leftovers)} more process(es) started from {state_dir}; stopping them:")
        for t in leftovers:
            progress(f"  pid {t.pid}: {t.label}")
        _killed, alive = procs.stop(leftovers, timeout_s)
        if alive:
            raise LocalFleetError("still running: " + ", ".join(f"pid {t.pid}" for t in alive))
    return info is not None or bool(leftovers)
