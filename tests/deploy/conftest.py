"""Rendering deploy/ once per session (`kubectl kustomize` of every env and every service folder), and what the
checks of the production bus share: a generated Secret's values, test certificates, a localized nats.conf.

kubectl is the one `make k8s-bins` builds (.tools/k8s/bin, pinned in tools/k8s/go.mod), so every machine renders
with the same kustomize; one on PATH is used only when that build is missing. No kubectl fails, never skips."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import pytest
import yaml

from flotilla_client import busauth, peoplefile
from flotilla_client.natsserver import free_port

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BUILT_KUBECTL = ROOT / ".tools" / "k8s" / "bin" / "kubectl"
PEOPLE_FILE = DEPLOY / "components" / "bus-security" / "people.yaml"

Manifest = list[dict[str, Any]]


def kubectl() -> str:
    """The built kubectl, else one on PATH; fails (never skips) when there is neither."""
    if BUILT_KUBECTL.exists():
        return str(BUILT_KUBECTL)
    found = shutil.which("kubectl")
    if found is None:
        missing = BUILT_KUBECTL.relative_to(ROOT)
        pytest.fail(f"no kubectl: {missing} is missing and none is on PATH; run `make k8s-bins` (it builds it)")
    return found


def kustomize(folder: Path) -> Manifest:
    """The objects `kubectl kustomize <folder>` renders; fails the test with kubectl's message."""
    result = subprocess.run([kubectl(), "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"kubectl kustomize {folder.relative_to(ROOT)} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="session")
def render() -> Callable[[str], Manifest]:
    """`render("envs/dev")` -> objects, each folder rendered once per session."""
    cache: dict[str, Manifest] = {}

    def get(folder: str) -> Manifest:
        if folder not in cache:
            cache[folder] = kustomize(DEPLOY / folder)
        return cache[folder]

    return get


# --- the production bus: a Secret's values, test certificates, and nats.conf localized for a real server ------


@pytest.fixture(scope="session")
def bus_secret() -> dict[str, str]:
    """The values of a Secret flotilla-bus-auth, as `flotilla bus-config secret --people` makes them for the people
    of the overlay's people file."""
    return busauth.secret_values(busauth.new_auth(), peoplefile.load(PEOPLE_FILE))


@pytest.fixture(scope="session")
def test_tls(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder laid out like cert-manager's Secret (tls.crt, tls.key, ca.crt) for `localhost`, made with openssl
    by busauth.make_tls (the certificate has no extended key usage: good for server and client, as routes need)."""
    state = tmp_path_factory.mktemp("tls")
    ca, cert, key = busauth.make_tls(state, "localhost")
    folder = state / "nats-tls"
    folder.mkdir()
    for source, name in ((cert, "tls.crt"), (key, "tls.key"), (ca, "ca.crt")):
        shutil.copy(source, folder / name)
    return folder


def nats_config_files(objects: Manifest) -> dict[str, str]:
    """The files of the rendered nats-config ConfigMap (nats.conf and what it includes)."""
    maps = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("nats-config")]
    [config] = maps
    return dict(config["data"])


def _replace(text: str, old: str, new: str) -> str:
    assert old in text, f"nats.conf no longer contains {old!r}: update the localization in tests/deploy/conftest.py"
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


class Localize(Protocol):
    def __call__(
        self,
        files: dict[str, str],
        folder: Path,
        tls: Path,
        *,
        port: int,
        monitor_port: int,
        cluster_port: int | None = None,
        routes: tuple[int, ...] = (),
    ) -> Path: ...


@pytest.fixture(scope="session")
def nats_files() -> Callable[[Manifest], dict[str, str]]:
    """`nats_files(objects)`: the files of the rendered nats-config ConfigMap."""
    return nats_config_files


@pytest.fixture(scope="session")
def localize() -> Localize:
    """`localize(files, folder, tls, port=..., monitor_port=...)`: see localize_nats_config."""
    return localize_nats_config
