"""The test side of the Kubernetes test world: the control plane itself lives in
flotilla_client.kubeworld (`flotilla kube up` and `flotilla demo --kubernetes` start the same one); this module
re-exports what tests use, under the names they have always used."""

from __future__ import annotations

from flotilla_client.kubeworld.controlplane import (
    CONTROL_PLANE_ROLE,
    KWOK_ANNOTATION,
    ControlPlane,
    control_plane,
    insecure_tls,
    node_object,
    nodes_ready,
    write_kubeconfig,
)
from flotilla_client.kubeworld.processes import BINARIES, Component, HarnessError, bin_dir, stop, wait_until
from flotilla_client.natsserver import free_port

BIN = bin_dir()
REPO = BIN.parents[2]
_insecure_tls = insecure_tls  # the old private name, still used by some tests

__all__ = [
    "BIN",
    "BINARIES",
    "CONTROL_PLANE_ROLE",
    "KWOK_ANNOTATION",
    "REPO",
    "Component",
    "ControlPlane",
    "HarnessError",
    "control_plane",
    "free_port",
    "insecure_tls",
    "node_object",
    "nodes_ready",
    "stop",
    "wait_until",
    "write_kubeconfig",
]
