"""A real Kubernetes control plane (etcd, API server, controller-manager, scheduler) with kwok nodes, for tests.

The binaries come from `make k8s-bins` (.tools/k8s/bin). Everything runs on loopback, on free ports, in a
temporary folder; every process gets its own process group and is stopped in reverse order of start (the API
server before etcd), then checked gone. Waits are on conditions (/readyz, Node Ready), never fixed sleeps.

Security is the simplest that is still real: the API server serves TLS (self-generated into its cert dir),
authenticates by static tokens (an admin in system:masters; controller-manager and scheduler as their own
users, so RBAC's bootstrap roles are what lets them work), authorizes with Node,RBAC, and signs service-account
tokens with an RSA key made by `openssl`. Clients skip TLS verification (loopback only, per test).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".tools" / "k8s" / "bin"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok")
# kwok's stages (in its Go module): nodes turn Ready and keep a lease, pods turn Running, deleted pods go.
STAGES = (
    "node/fast/node-initialize.yaml",
    "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "pod/fast/pod-ready.yaml",
    "pod/fast/pod-complete.yaml",
    "pod/fast/pod-delete.yaml",
)
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
CONTROL_PLANE_ROLE = "node-role.kubernetes.io/control-plane"


class HarnessError(RuntimeError):
    """The control plane did not come up (or go down) as asked; the message names the component and its log."""


@dataclass
class Component:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 25) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


@dataclass
class ControlPlane:
    root: Path
    server: str
    token: str
    kubeconfig: Path
    components: list[Component] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def pgids(self) -> list[int]:
        return [c.process.pid for c in self.components]

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        """Run the built kubectl as the admin; returns stdout, raises with stderr on failure when check."""
        done = subprocess.run(
            [str(BIN / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            input=stdin.encode() if stdin is not None else None,
            capture_output=True,
            timeout=120,
        )
        if check and done.returncode != 0:
            raise HarnessError(f"kubectl {' '.join(args)} exited {done.returncode}: {done.stderr.decode()}")
        return done.stdout.decode()

    def get_json(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", "-o", "json", *args))

    def apply(self, *objects: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """One raw API call as the admin: (HTTP status, decoded JSON body). Errors are returned, not raised."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, context=_insecure_tls(), timeout=30) as resp:
                return resp.status, _decode(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, _decode(err.read())

    def alive(self) -> list[str]:
        """Names of components whose process group still has a member."""
        return [c.name for c in self.components if _group_alive(c.process.pid)]


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")  # /readyz and friends answer plain text


def _insecure_tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def kwok_stage_dir() -> Path:
    """Where the pinned kwok module's stage files are (Go module cache, via tools/k8s/go.mod)."""
    out = subprocess.run(
        ["go", "list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/kwok"],
        cwd=REPO / "tools" / "k8s",
        capture_output=True,
        text=True,
        timeout=120,
    )
    if out.returncode != 0:
        raise HarnessError(f"cannot find the kwok module (run `make k8s-bins`): {out.stderr.strip()}")
    return Path(out.stdout.strip()) / "kustomize" / "stage"


def wait_until(what: str, check: Callable[[], bool], watch: list[Component], within_s: float) -> None:
    """Poll `check` until true; between polls wait on the newest process (so a crash ends the wait at once)."""
    deadline = time.monotonic() + within_s
    while not check():
        for c in watch:
            if c.process.poll() is not None:
                raise HarnessError(f"{c.name} exited {c.process.returncode} while waiting for {what}:\n{c.tail()}")
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {c.name}\n{c.tail(10)}" for c in watch)
            raise HarnessError(f"{what} not true within {within_s:.0f} s\n{logs}")
        try:
            watch[-1].process.wait(timeout=0.1)
        except subprocess.TimeoutExpired:
            pass


def _kubeconfig(path: Path, server: str, user: str, token: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": server, "insecure-skip-tls-verify": True}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
        "current-context": "local",
    }
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    return path


def node_object(name: str, kubelet_version: str, *, control_plane: bool = False) -> dict[str, Any]:
    """A Node that kwok manages (its annotation); kwok's node stage makes it Ready and keeps the version."""
    labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}
    taints: list[dict[str, str]] = []
    if control_plane:
        labels[CONTROL_PLANE_ROLE] = ""
        taints.append({"key": CONTROL_PLANE_ROLE, "effect": "NoSchedule"})
    resources = {"cpu": "32", "memory": "256Gi", "pods": "110"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": {KWOK_ANNOTATION: "fake"}},
        "spec": {"taints": taints},
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "nodeInfo": {
                "kubeletVersion": kubelet_version,
                "kubeProxyVersion": kubelet_version,
                "architecture": "amd64",
                "operatingSystem": "linux",
                "containerRuntimeVersion": "kwok",
                "kernelVersion": "kwok",
                "osImage": "kwok",
                "machineID": name,
                "systemUUID": name,
                "bootID": name,
            },
        },
    }


def nodes_ready(cp: ControlPlane, names: list[str]) -> bool:
    items = {n["metadata"]["name"]: n for n in cp.get_json("nodes")["items"]}
    for name in names:
        conditions = items.get(name, {}).get("status", {}).get("conditions", [])
        if not any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
            return False
    return True


class _Starter:
    def __init__(self, root: Path, stack: ExitStack, cp: ControlPlane) -> None:
        self.root, self.stack, self.cp = root, stack, cp

    def start(self, name: str, args: list[str]) -> Component:
        log = self.root / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [str(BIN / name), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.root,
                start_new_session=True,
            )
        component = Component(name, process, log)
        self.cp.components.append(component)
        self.stack.callback(stop, component)
        return component


def stop(component: Component, grace_s: float = 15.0) -> None:
    """SIGTERM the process group, SIGKILL it after grace_s, and reap; raise if a member survives."""
    pgid = component.process.pid
    if _group_alive(pgid):
        os.killpg(pgid, signal.SIGTERM)
    try:
        component.process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(pgid, signal.SIGKILL)
        component.process.wait(timeout=grace_s)
    if _group_alive(pgid):
        os.killpg(pgid, signal.SIGKILL)
    if _group_alive(pgid):
        raise HarnessError(f"{component.name}: process group {pgid} still alive after SIGKILL")


@contextmanager
def control_plane(
    workers: int = 2, kubelet_version: str = "v1.36.0", *, ready_within_s: float = 120.0
) -> Iterator[ControlPlane]:
    """Start etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok with 1 control-plane node
    (`kwok-cp-0`, tainted NoSchedule) and `workers` worker nodes (`kwok-worker-<i>`), all Ready with
    `kubelet_version`; stop everything on exit (reverse order) and check no process group is left."""
    missing = [b for b in BINARIES if not (BIN / b).exists()]
    if missing:
        raise HarnessError(f"missing {', '.join(missing)} in {BIN}: run `make k8s-bins`")
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="flotilla-kube-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        token = secrets.token_hex(16)
        kcm_token, sched_token = secrets.token_hex(16), secrets.token_hex(16)
        (root / "tokens.csv").write_text(
            f'{token},admin,admin-uid,"system:masters"\n'
            f"{kcm_token},system:kube-controller-manager,kcm-uid\n"
            f"{sched_token},system:kube-scheduler,scheduler-uid\n"
        )
        sa_key, sa_pub = root / "sa.key", root / "sa.pub"
        subprocess.run(["openssl", "genrsa", "-out", str(sa_key), "2048"], check=True, capture_output=True)
        subprocess.run(
            ["openssl", "rsa", "-in", str(sa_key), "-pubout", "-out", str(sa_pub)], check=True, capture_output=True
        )
        stages = kwok_stage_dir()
        configs = []
        for i, stage in enumerate(STAGES):
            copy = root / f"stage-{i}-{Path(stage).name}"
            copy.write_text((stages / stage).read_text())
            configs.append(copy)
        etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
        server = f"https://127.0.0.1:{api_port}"
        admin = _kubeconfig(root / "admin.kubeconfig", server, "admin", token)
        cp = ControlPlane(root=root, server=server, token=token, kubeconfig=admin)
        starter = _Starter(root, stack, cp)

        etcd = starter.start(
            "etcd",
            [
                "--name=default",
                f"--data-dir={root / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=default=http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync",
            ],
        )
        api = starter.start(
            "kube-apiserver",
            [
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                "--endpoint-reconciler-type=none",  # loopback may not be a Service endpoint
                f"--secure-port={api_port}",
                f"--cert-dir={root / 'pki'}",
                f"--token-auth-file={root / 'tokens.csv'}",
                "--authorization-mode=Node,RBAC",
                f"--service-account-key-file={sa_pub}",
                f"--service-account-signing-key-file={sa_key}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                "--service-cluster-ip-range=10.96.0.0/16",
            ],
        )

        def api_ready() -> bool:
            try:
                return cp.request("GET", "/readyz")[0] == 200
            except OSError:
                return False

        wait_until("API server /readyz", api_ready, [etcd, api], ready_within_s)
        cp.timings["api_ready_s"] = time.monotonic() - t0

        kcm_config = _kubeconfig(root / "kcm.kubeconfig", server, "kcm", kcm_token)
        starter.start(
            "kube-controller-manager",
            [
                f"--kubeconfig={kcm_config}",
                f"--authentication-kubeconfig={kcm_config}",
                f"--authorization-kubeconfig={kcm_config}",
                "--use-service-account-credentials=true",
                "--controllers=*,-serviceaccount-token",
                f"--service-account-private-key-file={sa_key}",
                "--leader-elect=false",
                "--secure-port=0",
                "--node-monitor-grace-period=40s",
            ],
        )
        sched_config = _kubeconfig(root / "scheduler.kubeconfig", server, "scheduler", sched_token)
        starter.start(
            "kube-scheduler",
            [
                f"--kubeconfig={sched_config}",
                f"--authentication-kubeconfig={sched_config}",
                f"--authorization-kubeconfig={sched_config}",
                "--leader-elect=false",
                "--secure-port=0",
            ],
        )
        starter.start(
            "kwok",
            [
                f"--kubeconfig={admin}",
                *[f"--config={c}" for c in configs],
                f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake",
                "--server-address=127.0.0.1:0",
            ],
        )
        names = ["kwok-cp-0", *[f"kwok-worker-{i}" for i in range(1, workers + 1)]]
        cp.apply(
            node_object(names[0], kubelet_version, control_plane=True),
            *[node_object(n, kubelet_version) for n in names[1:]],
        )
        wait_until("kwok nodes Ready", lambda: nodes_ready(cp, names), cp.components, ready_within_s)
        cp.timings["nodes_ready_s"] = time.monotonic() - t0
        try:
            yield cp
        finally:
            t_down = time.monotonic()
            stack.close()  # callbacks run last-registered first: kwok, scheduler, controller-manager, API, etcd
            cp.timings["teardown_s"] = time.monotonic() - t_down
            left = cp.alive()
            if left:
                raise HarnessError(f"processes left after teardown: {left}")
