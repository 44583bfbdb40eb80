"""`<state>/run.json`: what `flotilla up` started (pids, ports, URLs, versions) for `status`, `logs` and `down`."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path

import msgspec

from flotilla_client.errors import LocalFleetError

RUN_FILE = "run.json"
LOCK_FILE = "run.lock"


class ProcessState(StrEnum):
    """Where a supervised process is: running, waiting to start again after an exit, or stopped for good."""

    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    STOPPED = "stopped"


class LastExit(msgspec.Struct, kw_only=True):
    """How the previous process ended: `code 1` or `signal SIGKILL`, when, and whether someone asked for it."""

    pid: int
    status: str
    at: str
    requested: bool = False  # `flotilla restart` or `down`, not a crash


class Supervision(msgspec.Struct, kw_only=True):
    """What the supervisor knows of one process: its state, restarts after crashes and on request, last exit."""

    state: ProcessState = ProcessState.RUNNING
    started_at: str = ""
    restarts: int = 0  # after a crash
    requested_restarts: int = 0  # `flotilla restart`
    last_exit: LastExit | None = None
    next_start_at: str = ""  # in back-off: when it starts again


class NatsEntry(msgspec.Struct, kw_only=True):
    url: str
    name: str = "nats-server"  # nats-server-2, -3... for the other servers of `up --bus-servers N`
    pid: int | None = None  # None: an existing server (`--server`), not ours to stop
    port: int = 0
    monitor_url: str = ""
    websocket_url: str = ""  # nats-server's WebSocket listener (the dashboard's), no credentials in it
    log: str = ""
    config: str = ""
    version: str = ""
    supervision: Supervision = msgspec.field(default_factory=Supervision)

    @property
    def external(self) -> bool:
        return self.pid is None


class ServiceEntry(msgspec.Struct, kw_only=True):
    name: str
    module: str
    pid: int
    instance_id: str
    http_port: int
    health_url: str
    log: str
    state_dir: str
    version: str = ""
    supervision: Supervision = msgspec.field(default_factory=Supervision)


class SimEntry(msgspec.Struct, kw_only=True):
    """A simulated fleet started by `flotilla sim` (python -m flotilla_node_agent.fleet_sim)."""

    prefix: str
    pid: int
    clusters: int
    nodes: int
    log: str
    state_dir: str
    supervision: Supervision = msgspec.field(default_factory=Supervision)


class SupervisorEntry(msgspec.Struct, kw_only=True):
    """The process `flotilla up` leaves behind to start, watch and restart the others."""

    pid: int
    log: str
    socket: str
    started_at: str


class JaegerEntry(msgspec.Struct, kw_only=True):
    """The local Jaeger `flotilla up --jaeger` started (flotilla_client.jaeger); `down` stops it last."""

    pid: int
    ui_url: str  # UI and query API (/api/traces/{id}, /api/services)
    otlp_url: str  # OTLP/HTTP receiver
    log: str
    config: str


class RunInfo(msgspec.Struct, kw_only=True):
    state_dir: str
    started_at: str
    nats: NatsEntry  # the first (or only) nats-server: JetStream's streams, the services and the CLI connect here
    more_nats: list[NatsEntry] = []  # `up --bus-servers N`: the other N-1, routed to it in one NATS cluster
    services: list[ServiceEntry] = []
    sims: list[SimEntry] = []
    ready: bool = False
    supervisor: SupervisorEntry | None = None
    # The tracing settings (OTEL_*, FLOTILLA_JAEGER_URL) `up` ran with: later commands and sims use them too.
    tracing: dict[str, str] = {}
    jaeger: JaegerEntry | None = None


def run_file(state_dir: Path) -> Path:
    return state_dir / RUN_FILE


def load(state_dir: Path) -> RunInfo | None:
    """The run file of `state_dir`, or None when there is none; a damaged file is a clear error."""
    path = run_file(state_dir)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return msgspec.json.decode(data, type=RunInfo)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise LocalFleetError(
            f"{path} is damaged ({exc}); stop any flotilla processes left running by hand, then delete it"
        ) from None


def save(state_dir: Path, info: RunInfo) -> Path:
    """Write atomically (a reader never sees half a file)."""
    path = run_file(state_dir)
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    # Owner-only: the recorded NATS URL carries the admin credentials of the local bus.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(msgspec.json.format(msgspec.json.encode(info), indent=2) + b"\n")
    os.replace(tmp, path)
    return path


def update(state_dir: Path, change: Callable[[RunInfo], None]) -> RunInfo | None:
    """Read, change and write the run file under a lock (the supervisor and the CLI both write it); None if gone."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        info = load(state_dir)
        if info is not None:
            change(info)
            save(state_dir, info)
        return info
    finally:
        os.close(fd)  # releases the lock


def remove(state_dir: Path) -> None:
    run_file(state_dir).unlink(missing_ok=True)
    (state_dir / LOCK_FILE).unlink(missing_ok=True)  # nothing writes any more


def bus_servers(info: RunInfo) -> list[NatsEntry]:
    """Every nats-server of the fleet, the first first: one unless `flotilla up --bus-servers N`."""
    return [info.nats, *info.more_nats]


def server_url(state_dir: Path) -> str | None:
    """The NATS URL recorded by `flotilla up` in this state folder, if any (never raises)."""
    try:
        info = load(state_dir)
    except LocalFleetError:
        return None
    return info.nats.url if info else None
