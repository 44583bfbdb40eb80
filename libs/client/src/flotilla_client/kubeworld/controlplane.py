"""A real Kubernetes control plane (etcd, API server, controller-manager, scheduler) with kwok nodes.

The binaries come from `make k8s-bins`. Everything runs on loopback, on free ports, in one folder; every process
gets its own process group and is stopped in reverse order of start (the API server before etcd), then checked
gone. Waits are on conditions (/readyz, Node Ready), never fixed sleeps.

Security is the simplest that is still real: the API server serves TLS (self-generated into its cert dir),
authenticates by static tokens (an admin in system:masters; controller-manager and scheduler as their own
users, so RBAC's bootstrap roles are what lets them work) and by service-account tokens (TokenRequest works),
authorizes with Node,RBAC, and signs service-account tokens with an RSA key made by `openssl`. Clients skip TLS
verification (loopback only). The API server writes an audit log of writes to pods, evictions and nodes (node
patches with their body), so a test can say who deleted, evicted, cordoned or uncordoned what (`ControlPlane.audit`).

Not emulated (kwok's limits): no kubelet, so no containers, probes, images, volumes or logs; pods go Running
when scheduled and go when deleted; a Node's status changes only when someone writes it.
"""

from __future__ import annotations

import json
import secrets
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flotilla_client.kubeworld.processes import (
    Component,
    HarnessError,
    bin_dir,
    check_binaries,
    group_alive,
    stage_dir,
    start,
    wait_until,
)
from flotilla_client.natsserver import free_port

# kwok's stages: nodes turn Ready and keep a lease, pods turn Running, deleted pods go.
STAGES = (
    "node/fast/node-initialize.yaml",
    "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "pod/fast/pod-ready.yaml",
    "pod/fast/pod-complete.yaml",
    "pod/fast/pod-delete.yaml",
)
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
CONTROL_PLANE_ROLE = "node-role.kubernetes.io/control-plane"
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {  # with the patch itself: a node's cordons and uncordons can be read back from the log
            "level": "Request",
            "verbs": ["patch", "update"],
            "resources": [{"group": "", "resources": ["nodes"]}],
        },
        {
            "level": "Metadata",
            "verbs": ["create", "update", "patch", "delete", "deletecollection"],
            "resources": [{"group": "", "resources": ["pods", "pods/eviction", "nodes", "nodes/status"]}],
        },
        {"level": "None"},
    ],
}


@dataclass
class ControlPlane:
    root: Path
    server: str
    token: str
    kubeconfig: Path
    bins: Path
    components: list[Component] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    nodes: list[str] = field(default_factory=list)

    @property
    def pgids(self) -> list[int]:
        return [c.process.pid for c in self.components]

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True, kubeconfig: Path | None = None) -> str:
        """Run the built kubectl (as the admin unless `kubeconfig`); returns stdout, raises with stderr on failure."""
        done = subprocess.run(
            [str(self.bins / "kubectl"), "--kubeconfig", str(kubeconfig or self.kubeconfig), *args],
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
            with urllib.request.urlopen(req, context=insecure_tls(), timeout=30) as resp:
                return resp.status, _decode(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, _decode(err.read())

    def service_account_kubeconfig(self, namespace: str, name: str, path: Path, duration: str = "24h") -> Path:
        """A kubeconfig that authenticates with a real token of ServiceAccount `namespace/name` (TokenRequest)."""
        token = self.kubectl("create", "token", name, "-n", namespace, f"--duration={duration}").strip()
        return write_kubeconfig(path, self.server, f"system:serviceaccount:{namespace}:{name}", token)

    def audit(self) -> list[dict[str, Any]]:
        """The API server's audit events so far: writes to pods, pods/eviction, nodes and nodes/status."""
        path = self.root / "audit.log"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def alive(self) -> list[str]:
        """Names of components whose process group still has a member."""
        return [c.name for c in self.components if group_alive(c.process.pid)]


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")  # /readyz and friends answer plain text


def insecure_tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def write_kubeconfig(path: Path, server: str, user: str, token: str) -> Path:
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


def _tokens(root: Path) -> tuple[str, str, str]:
    token, kcm_token, sched_token = secrets.token_hex(16), secrets.token_hex(16), secrets.token_hex(16)
    (root / "tokens.csv").write_text(
        f'{token},admin,admin-uid,"system:masters"\n'
        f"{kcm_token},system:kube-controller-manager,kcm-uid\n"
        f"{sched_token},system:kube-scheduler,scheduler-uid\n"
    )
    return token, kcm_token, sched_token


def _service_account_keys(root: Path) -> tuple[Path, Path]:
    sa_key, sa_pub = root / "sa.key", root / "sa.pub"
    subprocess.run(["openssl", "genrsa", "-out", str(sa_key), "2048"], check=True, capture_output=True)
    subprocess.run(
        ["openssl", "rsa", "-in", str(sa_key), "-pubout", "-out", str(sa_pub)], check=True, capture_output=True
    )
    return sa_key, sa_pub


@contextmanager
def control_plane(
    workers: int = 2,
    kubelet_version: str = "v1.36.0",
    *,
    ready_within_s: float = 120.0,
    root: Path | None = None,
    node_prefix: str = "kwok",
) -> Iterator[ControlPlane]:
    """Start etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok with 1 control-plane node
    (`<prefix>-cp-0`, tainted NoSchedule) and `workers` worker nodes (`<prefix>-worker-<i>`), all Ready with
    `kubelet_version`; stop everything on exit (reverse order) and check no process group is left. `root`: the
    folder to run in (default: a temporary one, removed at the end)."""
    bins = bin_dir()
    check_binaries(bins)
    t0 = time.monotonic()
    with ExitStack() as stack:
        if root is None:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="flotilla-kube-")))
        root.mkdir(parents=True, exist_ok=True)
        token, kcm_token, sched_token = _tokens(root)
        sa_key, sa_pub = _service_account_keys(root)
        (root / "audit-policy.json").write_text(json.dumps(AUDIT_POLICY))
        configs = []
        for i, stage in enumerate(STAGES):
            copy = root / f"stage-{i}-{Path(stage).name}"
            copy.write_text((stage_dir(bins) / stage).read_text())
            configs.append(copy)
        etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
        server = f"https://127.0.0.1:{api_port}"
        admin = write_kubeconfig(root / "admin.kubeconfig", server, "admin", token)
        cp = ControlPlane(root=root, server=server, token=token, kubeconfig=admin, bins=bins)

        def run(name: str, args: list[str]) -> Component:
            component = start(stack, root, name, [str(bins / name), *args])
            cp.components.append(component)
            return component

        etcd = run("etcd", [
            "--name=default", f"--data-dir={root / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{etcd_port}", f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
            f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-cluster=default=http://127.0.0.1:{peer_port}", "--unsafe-no-fsync",
        ])  # fmt: skip
        api = run("kube-apiserver", [
            f"--etcd-servers=http://127.0.0.1:{etcd_port}", "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            "--endpoint-reconciler-type=none",  # loopback may not be a Service endpoint
            f"--secure-port={api_port}", f"--cert-dir={root / 'pki'}", f"--token-auth-file={root / 'tokens.csv'}",
            "--authorization-mode=Node,RBAC", f"--service-account-key-file={sa_pub}",
            f"--service-account-signing-key-file={sa_key}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--service-cluster-ip-range=10.96.0.0/16",
            "--allow-privileged=true",  # as kubeadm sets it: the node-agent DaemonSet is privileged
            f"--audit-policy-file={root / 'audit-policy.json'}", f"--audit-log-path={root / 'audit.log'}",
            "--audit-log-format=json",
        ])  # fmt: skip

        def api_ready() -> bool:
            try:
                return cp.request("GET", "/readyz")[0] == 200
            except OSError:
                return False

        wait_until("API server /readyz", api_ready, [etcd, api], ready_within_s)
        cp.timings["api_ready_s"] = time.monotonic() - t0

        kcm = write_kubeconfig(root / "kcm.kubeconfig", server, "kcm", kcm_token)
        run("kube-controller-manager", [
            f"--kubeconfig={kcm}", f"--authentication-kubeconfig={kcm}", f"--authorization-kubeconfig={kcm}",
            "--use-service-account-credentials=true", "--controllers=*,-serviceaccount-token",
            f"--service-account-private-key-file={sa_key}", "--leader-elect=false", "--secure-port=0",
            "--node-monitor-grace-period=40s",
        ])  # fmt: skip
        sched = write_kubeconfig(root / "scheduler.kubeconfig", server, "scheduler", sched_token)
        run("kube-scheduler", [
            f"--kubeconfig={sched}", f"--authentication-kubeconfig={sched}", f"--authorization-kubeconfig={sched}",
            "--leader-elect=false", "--secure-port=0",
        ])  # fmt: skip
        run("kwok", [
            f"--kubeconfig={admin}", *[f"--config={c}" for c in configs],
            f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake", "--server-address=127.0.0.1:0",
            # kwok renews each node's Lease (kube-node-lease); its heartbeat stage writes status only every 10 min,
            # so without leases the node controller marks every node NotReady after its grace period.
            "--node-lease-duration-seconds=40",
        ])  # fmt: skip
        cp.nodes = [f"{node_prefix}-cp-0", *[f"{node_prefix}-worker-{i}" for i in range(1, workers + 1)]]
        cp.apply(
            node_object(cp.nodes[0], kubelet_version, control_plane=True),
            *[node_object(n, kubelet_version) for n in cp.nodes[1:]],
        )
        wait_until("kwok nodes Ready", lambda: nodes_ready(cp, cp.nodes), cp.components, ready_within_s)
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
