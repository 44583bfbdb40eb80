"""What the production bus's checks share (test_bus_security_*.py, test_bus_people.py, test_dashboard_deploy.py):
reading the rendered pods (their Secrets, env and mounted files) and a real nats-server run from the rendered
configuration, made local (conftest.py cannot be imported by name under importlib mode)."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats.errors
from integration_support import WatchedConnection
from nats.aio.subscription import Subscription

from flotilla_client.natsserver import find_nats_server, free_port
from flotilla_contracts.subjects import Service
from flotilla_testkit import ConditionNotMet, eventually_sync

SECRET = "flotilla-bus-auth"
SERVER_TLS_SECRET = "nats-server-tls"
IN_CLUSTER = "nats.flotilla.svc:4222"
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")
# The services that connect with a user of their own; node-agent connects as its cluster (auth callout).
SERVICE_USERS = [s for s in Service if s is not Service.NODE_AGENT]
Manifest = list[dict[str, Any]]
Render = Callable[[str], Manifest]
NatsFiles = Callable[[Manifest], dict[str, str]]


# --- the rendered pods -------------------------------------------------------------------------------------------


def workloads(objects: Manifest, name: str) -> list[dict[str, Any]]:
    found = [
        o
        for o in objects
        if o["kind"] in WORKLOADS and o["metadata"].get("labels", {}).get("app.kubernetes.io/name") == name
    ]
    assert found, f"no workload {name}"
    return found


def only(objects: Manifest, kind: str, name: str) -> dict[str, Any]:
    [found] = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def pod_container(workload: dict[str, Any]) -> dict[str, Any]:
    [c] = workload["spec"]["template"]["spec"]["containers"]
    return dict(c)


def secret_keys(c: dict[str, Any], secret: str = SECRET) -> dict[str, str]:
    """env name -> key, for every env entry of the container taken from `secret`."""
    refs = {}
    for item in c.get("env", []):
        ref = item.get("valueFrom", {}).get("secretKeyRef")
        if ref and ref["name"] == secret:
            refs[item["name"]] = ref["key"]
    return refs


def env_from_secrets(c: dict[str, Any]) -> list[str]:
    return [e["secretRef"]["name"] for e in c.get("envFrom", []) if "secretRef" in e]


def mounted_file(workload: dict[str, Any], path: str) -> tuple[str, str]:
    """(Secret name, key) of the file at `path` in the workload's container, from a Secret volume."""
    volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
    for mount in pod_container(workload).get("volumeMounts", []):
        prefix = mount["mountPath"].rstrip("/") + "/"
        if path.startswith(prefix) and "secret" in volumes[mount["name"]]:
            secret = volumes[mount["name"]]["secret"]
            file = path[len(prefix) :]
            items = {i["path"]: i["key"] for i in secret.get("items", [])} or {file: file}
            assert file in items, f"{path}: the Secret volume {mount['name']} does not project {file}"
            return secret["secretName"], items[file]
    raise AssertionError(f"{path} is not mounted from a Secret in {workload['metadata']['name']}")


# --- a real nats-server with the overlay's configuration ---------------------------------------------------------


def _replace(text: str, old: str, new: str) -> str:
    assert old in text, (
        f"nats.conf no longer contains {old!r}: update localize_nats_config (tests/deploy/bus_security_support.py)"
    )
    return text.replace(old, new)


def _drop_block(text: str, name: str) -> str:
    """`text` without the top-level `name { ... }` block (braces matched)."""
    start = text.index(f"\n{name} {{") + 1
    depth = 0
    for end in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[end], 0)
        if text[end] == "}" and depth == 0:
            return text[:start] + text[end + 1 :]
    raise AssertionError(f"unbalanced {name} block")


WEBSOCKET_LISTEN = "listen: 0.0.0.0:8443"  # deploy/components/dashboard/websocket.conf


def localize_nats_config(
    files: dict[str, str],
    folder: Path,
    tls: Path,
    *,
    port: int,
    monitor_port: int,
    cluster_port: int | None = None,
    routes: tuple[int, ...] = (),
) -> Path:
    """Write the rendered configuration into `folder` as a local server runs it: the pod's addresses, pid file,
    store and certificate paths replaced by local ones. With no `cluster_port` the cluster block is left out
    (a single server); else it listens there and routes to `routes` (ports on localhost). The WebSocket listener
    of envs/prod (components/dashboard), when there is one, listens on a free port of localhost. Returns nats.conf."""
    folder.mkdir(parents=True, exist_ok=True)
    files = dict(files)
    if WEBSOCKET_LISTEN in files.get("websocket.conf", ""):
        local = f"listen: 127.0.0.1:{free_port()}"
        files["websocket.conf"] = files["websocket.conf"].replace(WEBSOCKET_LISTEN, local)
    conf = files["nats.conf"]
    conf = _replace(conf, "listen: 0.0.0.0:4222", f"listen: 127.0.0.1:{port}")
    conf = _replace(conf, "http: 0.0.0.0:8222", f"http: 127.0.0.1:{monitor_port}")
    conf = _replace(conf, "pid_file: /var/run/nats/nats.pid", f'pid_file: "{folder}/nats.pid"')
    conf = _replace(conf, "store_dir: /data/jetstream", f'store_dir: "{folder}/jetstream"')
    if cluster_port is None:
        conf = _drop_block(conf, "cluster")
    else:
        conf = _replace(conf, "listen: 0.0.0.0:6222", f"listen: 127.0.0.1:{cluster_port}")
        pod_routes = re.search(r"routes: \[[^\]]*\]", conf)
        assert pod_routes, "nats.conf has no routes list"
        local = "routes: [" + ", ".join(f"nats://localhost:{p}" for p in routes) + "]"
        conf = conf.replace(pod_routes.group(0), local)
    for name, text in {**files, "nats.conf": conf}.items():
        (folder / name).write_text(text.replace("/etc/nats-tls/", f"{tls}/"))
    return folder / "nats.conf"


@dataclass
class Server:
    port: int
    monitor_port: int
    cluster_port: int
    process: subprocess.Popen[bytes]
    log: Path

    def url(self, user: str, password: str) -> str:
        return f"tls://{user}:{password}@localhost:{self.port}"

    def monitor(self, path: str) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}{path}", timeout=2) as answer:
            return dict(json.load(answer))


def start(conf: Path, environ: dict[str, str], port: int, monitor_port: int, cluster_port: int = 0) -> Server:
    log = conf.parent / "nats.log"
    with log.open("wb") as out:
        process = subprocess.Popen([find_nats_server(), "-c", str(conf)], env=environ, stdout=out, stderr=out)
    server = Server(port, monitor_port, cluster_port, process, log)

    def monitoring() -> bool:
        assert process.poll() is None, f"nats-server refused the overlay's configuration:\n{log.read_text()[-2000:]}"
        server.monitor("/varz")
        return True

    try:
        eventually_sync(monitoring, "nats-server's monitoring port", timeout_s=10, retrying=(OSError,))
    except ConditionNotMet as late:
        stop(server)
        raise AssertionError(f"nats-server did not start:\n{log.read_text()[-2000:]}") from late
    return server


def stop(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@contextlib.contextmanager
def single_server(files: dict[str, str], folder: Path, tls: Path, secret: dict[str, str]) -> Iterator[Server]:
    """One server of the rendered `files` as pod nats-0 (localized in `folder`, the cluster block left out), the
    Secret's values `secret` in its environment; stopped on leaving."""
    port, monitor_port = free_port(), free_port()
    conf = localize_nats_config(files, folder, tls, port=port, monitor_port=monitor_port)
    running = start(conf, {"POD_NAME": "nats-0", **secret}, port, monitor_port)
    try:
        yield running
    finally:
        stop(running)


async def live_subscription(watcher: WatchedConnection, subject: str) -> Subscription:
    """A subscription the server has certainly registered: a probe published to it came back.

    (A flush is not proof: when the server's first PING crosses nats-py's connect handshake, the PONG it answers
    later resolves the next flush before the server has read what came before it.)
    """
    sub = await watcher.nc.subscribe(subject)
    probe = subject.replace(">", "probe").replace("*", "probe")
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        await watcher.nc.publish(probe, b"probe")
        try:
            await sub.next_msg(timeout=0.2)
        except nats.errors.TimeoutError:
            continue
        # Messages from one connection arrive in order: once the fence is back, no probe is left in flight.
        await watcher.nc.publish(probe, b"fence")
        while (await sub.next_msg(timeout=3)).data != b"fence":
            pass
        return sub
    raise AssertionError(f"the subscription to {subject} never received its probe")


def speak_plaintext(port: int, lines: bytes, greeted: bool = True) -> tuple[bytes, bytes]:
    """(the server's greeting, all it says after `lines`) on a plaintext TCP connection, until it hangs up."""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        greeting = sock.recv(4096) if greeted else b""
        sock.sendall(lines)
        answer = b""
        try:
            while chunk := sock.recv(4096):
                answer += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return greeting, answer
