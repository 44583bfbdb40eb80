"""`<state>/run.json`: what `flotilla up` started (pids, ports, URLs, versions) for `status`, `logs` and `down`."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from flotilla_client.errors import LocalFleetError

RUN_FILE = "run.json"


class NatsEntry(msgspec.Struct, kw_only=True):
    url: str
    pid: int | None = None  # None: an existing server (`--server`), not ours to stop
    port: int = 0
    monitor_url: str = ""
    log: str = ""
    config: str = ""
    version: str = ""

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


class SimEntry(msgspec.Struct, kw_only=True):
    """A simulated fleet started by `flotilla sim` (python -m flotilla_node_agent.sim)."""

    prefix: str
    pid: int
    clusters: int
    nodes: int
    log: str
    state_dir: str


class RunInfo(msgspec.Struct, kw_only=True):
    state_dir: str
    started_at: str
    nats: NatsEntry
    services: list[ServiceEntry] = []
    sims: list[SimEntry] = []
    ready: bool = False


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
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    # Owner-only: the recorded NATS URL carries the admin credentials of the local bus.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(msgspec.json.format(msgspec.json.encode(info), indent=2) + b"\n")
    os.replace(tmp, path)
    return path


def remove(state_dir: Path) -> None:
    run_file(state_dir).unlink(missing_ok=True)


def server_url(state_dir: Path) -> str | None:
    """The NATS URL recorded by `flotilla up` in this state folder, if any (never raises)."""
    try:
        info = load(state_dir)
    except LocalFleetError:
        return None
    return info.nats.url if info else None
