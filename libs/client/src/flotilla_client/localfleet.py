"""`flotilla up` and `flotilla down`: nats-server and the five services, kept running by a supervisor process."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from flotilla_client import busauth, control, procs, runfile, tracingenv
from flotilla_client.errors import LocalFleetError
from flotilla_client.natsserver import free_port
from flotilla_client.runfile import RunInfo, ServiceEntry, SimEntry
from flotilla_contracts.subjects import Service
from flotilla_runtime.natsconn import CA_ENV
from flotilla_runtime.settings import env_prefix

Progress = Callable[[str], None]
SERVICES: tuple[Service, ...] = tuple(Service)
NATS_SERVER = "nats-server"
SUPERVISOR = "supervisor"
JAEGER = "jaeger"
SUPERVISOR_MODULE = "flotilla_client.supervisor"
TAIL_BYTES = 1024 * 1024
MAX_BUS_SERVERS = 8  # `flotilla up --bus-servers`: nats-server, nats-server-2 ... nats-server-8


def bus_server_name(index: int) -> str:
    """The process name of the `index`-th (1-based) nats-server: `nats-server`, then `nats-server-2`..."""
    return NATS_SERVER if index == 1 else f"{NATS_SERVER}-{index}"


def bus_server_dir(state_dir: Path, index: int) -> Path:
    """Where the `index`-th nats-server keeps its configuration (and the first its JetStream)."""
    return state_dir / ("nats" if index == 1 else f"nats-{index}")


LOG_NAMES: tuple[str, ...] = (
    *(s.value for s in SERVICES),
    *(bus_server_name(i) for i in range(1, MAX_BUS_SERVERS + 1)),
    SUPERVISOR,
)


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


SIM_MODULE = "flotilla_node_agent.fleet_sim"
SIM_URL_ENV = "FLOTILLA_SIM_NATS_URL"  # the sim's NATS URL with credentials (see flotilla_node_agent.fleet_sim)
# `flotilla sim --bus-address`: the sim reaches the bus at this address (same port), e.g. its own 127.0.0.x
SIM_ADDRESS_ENV = "FLOTILLA_SIM_BUS_ADDRESS"
# `flotilla sim --bus-server K`: the sim connects to the K-th nats-server of `up --bus-servers N` (1: the first)
SIM_SERVER_ENV = "FLOTILLA_SIM_BUS_SERVER"


def at_address(url: str, address: str) -> str:
    """`url` (credentials kept) at another host, same port: one client address and one server address:port
    carry at most the kernel's ephemeral port range of connections (about 28,000), so big sims spread out."""
    parts = urlsplit(url)
    credentials, _, _ = parts.netloc.rpartition("@")
    netloc = (f"{credentials}@" if credentials else "") + address + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def tracked(info: RunInfo) -> tuple[list[procs.Tracked], list[procs.Tracked]]:
    """(simulated fleets and services, nats-server and Jaeger) recorded in a run file, nats-server only when we
    started it, Jaeger only with `up --jaeger`."""
    sims = [procs.Tracked(f"sim {s.prefix}", s.pid, SIM_MODULE) for s in info.sims]
    services = [procs.Tracked(s.name, s.pid, s.module) for s in info.services]
    nats = [procs.Tracked(n.name, n.pid, n.config) for n in runfile.bus_servers(info) if n.pid]
    if info.jaeger is not None:  # last: the services flush their spans into it as they stop
        nats.append(procs.Tracked(JAEGER, info.jaeger.pid, info.jaeger.config))
    return sims + services, nats


def supervisor_marker(state_dir: Path) -> str:
    return f"{SUPERVISOR_MODULE} --state-dir {state_dir}"


def tracked_supervisor(info: RunInfo) -> list[procs.Tracked]:
    sup = info.supervisor
    return [procs.Tracked(SUPERVISOR, sup.pid, supervisor_marker(Path(info.state_dir)))] if sup else []


def spawn_sim(
    state_dir: Path, nats_url: str, prefix: str, args: list[str], base_env: Mapping[str, str]
) -> subprocess.Popen[bytes]:
    """A simulated fleet as a detached process, its state in `<state>/sim-<prefix>` (the supervisor calls this)."""
    sim_dir = state_dir / f"sim-{prefix}"
    sim_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    # The admin URL goes in the environment, not on the command line (where `ps` would show its password).
    command = [sys.executable, "-m", SIM_MODULE, "--state-dir", str(sim_dir), "--prefix", prefix, *args]
    address = base_env.get(SIM_ADDRESS_ENV, "")
    env = {**base_env, SIM_URL_ENV: at_address(nats_url, address) if address else nats_url}
    ca = busauth.tls_ca(state_dir)
    if ca is not None and nats_url.startswith("tls://"):
        env[CA_ENV] = str(ca)
    return procs.spawn(command, log_path(state_dir, f"sim-{prefix}"), env, cwd=state_dir)


def start_sim(
    state_dir: Path, args: list[str], *, prefix: str, clusters: int, nodes: int, bus_address: str = "",
    bus_server: int = 1,
) -> SimEntry:  # fmt: skip
    """Ask the supervisor to start a simulated fleet and keep it running; recorded in run.json so `down` stops it.
    `bus_address`: the sim connects to the bus there (same port) instead of the fleet's address; `bus_server`:
    to the K-th nats-server of `up --bus-servers N` (the supervisor starts it again there after a crash)."""
    state_dir = state_dir.resolve()
    if runfile.load(state_dir) is None:
        raise LocalFleetError(f"no local fleet runs from {state_dir}; start one with `flotilla up` first")
    # The sim runs with the environment of the `flotilla sim` that asked for it, as if it started it itself.
    # With the tracing settings `up` recorded, unless this environment names an exporter of its own.
    env = tracingenv.with_recorded(os.environ, tracingenv.recorded(state_dir))
    env = {**env, SIM_ADDRESS_ENV: bus_address} if bus_address else env
    env = {**env, SIM_SERVER_ENV: str(bus_server)}
    spec = control.SimSpec(prefix=prefix, args=args, clusters=clusters, nodes=nodes, env=env)
    reply = control.ask(state_dir, control.Request(op=control.Op.START_SIM, sim=spec))
    info = runfile.load(state_dir)
    entry = next((s for s in info.sims if s.prefix == prefix), None) if info else None
    if entry is None:
        raise LocalFleetError(f"the supervisor started sim {prefix!r} (pid {reply.pid}) but run.json lacks it")
    return entry


def process_names(info: RunInfo) -> list[str]:
    """What `flotilla restart` accepts for this fleet: nats-server (when ours; every one of them in turn with `up
    --bus-servers N`), nats-server-2... (one), the services, sim:<prefix>."""
    names = [n.name for n in runfile.bus_servers(info)] if info.nats.pid is not None else []
    return names + [s.value for s in SERVICES] + [f"sim:{s.prefix}" for s in info.sims]


def restart(state_dir: Path, name: str, timeout_s: float) -> control.Reply:
    """Ask the supervisor to restart one process on purpose (not a crash); returns once the new one is up."""
    state_dir = state_dir.resolve()
    info = runfile.load(state_dir)
    if info is None:
        raise LocalFleetError(f"no local fleet runs from {state_dir}; start one with `flotilla up`")
    known = process_names(info)
    if name not in known and not (name == "sim" and info.sims):
        hint = "" if info.sims or not name.startswith("sim") else " (no simulated fleet runs)"
        raise LocalFleetError(f"no process {name!r} in the local fleet{hint}; choose one of {', '.join(known)}")
    return control.ask(state_dir, control.Request(op=control.Op.RESTART, name=name, timeout_s=timeout_s))


def leftover_markers(state_dir: Path) -> list[str]:
    """Strings only our own processes carry: the supervisor's command, the nats-server config path, state variables."""
    markers = [str(state_dir / "nats" / "nats-server.conf"), f"--state-dir {state_dir / 'sim-'}"]
    markers += [str(bus_server_dir(state_dir, i) / "nats-server.conf") for i in range(2, MAX_BUS_SERVERS + 1)]
    markers.append(f"--config {state_dir / 'jaeger' / 'jaeger.yaml'}")  # `up --jaeger`
    markers += [f"{env_prefix(s.value)}STATE_DIR={state_dir / s.value}" for s in SERVICES]
    return [supervisor_marker(state_dir), *markers]


def _live(info: RunInfo) -> list[procs.Tracked]:
    services, nats = tracked(info)
    return [t for t in tracked_supervisor(info) + services + nats if procs.alive(t.pid, t.marker)]


def running(state_dir: Path) -> bool:
    """True when a fleet started from this folder still has a live process."""
    info = runfile.load(state_dir)
    return info is not None and bool(_live(info))


def check_not_running(state_dir: Path, progress: Progress) -> None:
    """Refuse when a fleet from this folder still runs; remove a run file whose processes are all gone."""
    info = runfile.load(state_dir)
    if info is None:
        return
    live = _live(info)
    if live:
        names = ", ".join(f"{t.label} (pid {t.pid})" for t in live)
        raise LocalFleetError(
            f"a local fleet is already running from {state_dir} ({names}); stop it with `flotilla down` "
            "or use another --state-dir"
        )
    runfile.remove(state_dir)
    progress(f"removed a stale {runfile.run_file(state_dir)} (none of its processes is running)")


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
        extra.setdefault("revoker_nats_url", busauth.revoker_url(nats_url, auth))
    port = free_port()
    service_dir = state_dir / service.value
    service_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
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


def stop_all(info: RunInfo, timeout_s: float, progress: Progress) -> list[procs.Tracked]:
    """Services first (they flush their outboxes into NATS), then nats-server; returns what is still alive."""
    services, nats = tracked(info)
    left: list[procs.Tracked] = []
    for group in (services, nats):
        group = [t for t in group if procs.alive(t.pid, t.marker)]
        killed, alive = procs.stop(group, timeout_s)
        for t in group:
            how = "killed (did not stop in time)" if t in killed else "stopped"
            progress(f"  {t.label:<22} pid {t.pid:<8} {'STILL RUNNING' if t in alive else how}")
        left += alive
    return left


def stop_everything(state_dir: Path, timeout_s: float, progress: Progress) -> list[procs.Tracked]:
    """The supervisor first (it stops its processes and restarts none), then whatever run.json still names."""
    info = runfile.load(state_dir)
    if info is None:
        return []
    supervisor = [t for t in tracked_supervisor(info) if procs.alive(t.pid, t.marker)]
    if supervisor:
        try:
            request = control.Request(op=control.Op.SHUTDOWN, timeout_s=timeout_s)
            for gone in control.ask(state_dir, request).stopped:
                progress(f"  {gone.name:<22} pid {gone.pid:<8} {gone.how}")
        except LocalFleetError as exc:
            progress(f"  {exc}; stopping the supervisor by signal")
        _killed, alive = procs.stop(procs.wait_gone(supervisor, 5.0), timeout_s)
        progress(f"  {SUPERVISOR:<22} pid {supervisor[0].pid:<8} {'STILL RUNNING' if alive else 'stopped'}")
    return stop_all(runfile.load(state_dir) or info, timeout_s, progress) + (alive if supervisor else [])


def down(state_dir: Path, timeout_s: float, progress: Progress) -> bool:
    """Stop what `up` started from `state_dir`; False when nothing was running. Raises if a process survives."""
    state_dir = state_dir.resolve()
    from flotilla_client.kubeworld import launch as kubeworld  # its agents go before the bus they speak on

    kube = kubeworld.stop(state_dir, timeout_s, progress)
    info = runfile.load(state_dir)
    if info is not None:
        progress(f"stopping the local fleet in {state_dir}:")
        left = stop_everything(state_dir, timeout_s, progress)
        if left:
            names = ", ".join(f"{t.label} (pid {t.pid})" for t in left)
            raise LocalFleetError(f"could not stop {names}; {runfile.run_file(state_dir)} is kept")
        runfile.remove(state_dir)
        control.socket_path(state_dir).unlink(missing_ok=True)  # left by a supervisor that was killed
    leftovers = procs.find_by_markers(leftover_markers(state_dir))
    if leftovers:
        progress(f"found {len(leftovers)} more process(es) started from {state_dir}; stopping them:")
        for t in leftovers:
            progress(f"  pid {t.pid}: {t.label}")
        _killed, alive = procs.stop(leftovers, timeout_s)
        if alive:
            raise LocalFleetError("still running: " + ", ".join(f"pid {t.pid}" for t in alive))
    return info is not None or bool(leftovers) or kube
