"""Rendering deploy/ once per session (`kubectl kustomize` of every env and every service folder), and what the
checks of the production bus share: a generated Secret's values, test certificates, the rendered nats.conf
(bus_security_support.localize_nats_config runs it locally).

kubectl is the one `make k8s-bins` builds (.tools/k8s/bin, pinned in tools/k8s/go.mod), so every machine renders
with the same kustomize; one on PATH is used only when that build is missing. No kubectl fails, never skips."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from flotilla_client import busauth, peoplefile

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


@pytest.fixture(scope="session")
def nats_files() -> Callable[[Manifest], dict[str, str]]:
    """`nats_files(objects)`: the files of the rendered nats-config ConfigMap."""
    return nats_config_files
