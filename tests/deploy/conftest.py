"""Rendering deploy/ once per session: `kubectl kustomize` of every env and every service folder."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBECTL = shutil.which("kubectl")

Manifest = list[dict[str, Any]]


def kustomize(folder: Path) -> Manifest:
    """The objects `kubectl kustomize <folder>` renders; fails the test with kubectl's message."""
    if KUBECTL is None:
        pytest.skip("kubectl is not installed: the kustomize checks need `kubectl kustomize` (client 1.14+)")
    result = subprocess.run([KUBECTL, "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
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
