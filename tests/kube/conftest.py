"""Fixtures of the Kubernetes tests: `kube_cluster`, a real control plane with 1 control-plane and 2 worker kwok
nodes (kube_support), and `shipped`, one such control plane per test module with the node-agent's shipped manifests
applied and its ServiceAccount's token (shipped_rbac_support)."""

from collections.abc import Iterator

import pytest
from kube_support import ControlPlane, control_plane
from shipped_rbac_support import Shipped, shipped_control_plane


@pytest.fixture
def kube_cluster() -> Iterator[ControlPlane]:
    with control_plane(workers=2, kubelet_version="v1.36.0") as cp:
        yield cp


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shipped]:
    """One control plane per module, with deploy/base and deploy/services/node-agent applied as rendered."""
    with shipped_control_plane(tmp_path_factory.mktemp("sa")) as running:
        yield running
