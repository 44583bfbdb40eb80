"""The `kube_cluster` fixture: a real control plane with 1 control-plane and 2 worker kwok nodes (kube_support)."""

from collections.abc import Iterator

import pytest
from kube_support import ControlPlane, control_plane


@pytest.fixture
def kube_cluster() -> Iterator[ControlPlane]:
    with control_plane(workers=2, kubelet_version="v1.36.0") as cp:
        yield cp
