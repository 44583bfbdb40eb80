"""The supervisor's control socket (`<state>/supervisor.sock`, owner only): one JSON request line, one reply line."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path

import msgspec

from flotilla_client.errors import LocalFleetError

SOCKET_NAME = "supervisor.sock"
MAX_LINE = 1024 * 1024
SUN_PATH_MAX = 100  # sockaddr_un holds 108 bytes; longer paths go through /proc/self/fd (Linux)


class Op(StrEnum):
    """What `flotilla` asks the supervisor."""

    RESTART = "restart"  # stop one process and start it again at once, not counted as a crash
    START_SIM = "start-sim"  # start (and from then on supervise) a simulated fleet
    SHUTDOWN = "shutdown"  # stop everything (services and sims, then nats-server) and exit


class SimSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A simulated fleet to run: `python -m flotilla_node_agent.fleet_sim` with these arguments."""

    prefix: str
    args: list[str]
    clusters: int
    nodes: int
    env: dict[str, str] = {}  # the environment of `flotilla sim` (empty: the supervisor's)


class Request(msgspec.Struct, frozen=True, kw_only=True):
    op: Op
    name: str = ""  # RESTART: a service, nats-server or sim:<prefix>
    sim: SimSpec | None = None
    timeout_s: float = 30.0


class Stopped(msgspec.Struct, frozen=True, kw_only=True):
    """A process SHUTDOWN ended: `stopped` by SIGTERM, or `killed` when it did not stop in time."""

    name: str
    pid: int
    how: str


class Reply(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    error: str = ""
    name: str = ""
    old_pid: int = 0
    pid: int = 0
    instance_id: str = ""  # a service's new instance id (it answers $SRV.PING with it)
    stopped: list[Stopped] = []


def socket_path(state_dir: Path) -> Path:
    return state_dir / SOCKET_NAME


@contextlib.contextmanager
def reachable_path(path: Path) -> Iterator[str]:
    """`path` as a string `bind`/`connect` accept, through the folder's descriptor when it is too long."""
    if len(os.fsencode(path)) <= SUN_PATH_MAX:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def ask(state_dir: Path, request: Request) -> Reply:
    """Send one request and wait for its reply (up to the request's timeout and a margin)."""
    path = socket_path(state_dir)
    not_running = (
        f"the supervisor of the local fleet in {state_dir} is not running (no answer on {path}); "
        "stop what is left with `flotilla down`, then `flotilla up` again"
    )
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(request.timeout_s + 10.0)
        try:
            with reachable_path(path) as address:
                sock.connect(address)
            sock.sendall(msgspec.json.encode(request) + b"\n")
            data = _read_line(sock)
        except (FileNotFoundError, ConnectionRefusedError, ConnectionResetError, BrokenPipeError):
            raise LocalFleetError(not_running) from None
        except TimeoutError:
            raise LocalFleetError(f"the supervisor did not answer within {request.timeout_s + 10:g}s") from None
    if not data:
        raise LocalFleetError(not_running)
    try:
        reply = msgspec.json.decode(data, type=Reply)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise LocalFleetError(f"the supervisor gave a reply this flotilla does not understand: {exc}") from None
    if not reply.ok:
        raise LocalFleetError(reply.error)
    return reply


def _read_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n") and len(data) < MAX_LINE:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.strip()
