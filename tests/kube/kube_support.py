"""The test side of the Kubernetes test world: the control plane itself lives in
flotilla_client.kubeworld (`flotilla kube up` and `flotilla demo --kubernetes` start the same one); this module
re-exports what tests use, under the names they have always used."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

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
from flotilla_testkit import eventually as shared_eventually

BIN = bin_dir()


async def eventually(what: str, check: Callable[[], Any], within_s: float = 60.0, every_s: float = 0.2) -> Any:
    """flotilla_testkit.eventually for the Kubernetes tests: a plain function runs in a thread (kubectl and raw API
    calls block), a coroutine function on the loop; `every_s` is only the polling interval."""

    async def in_thread() -> Any:
        value = await asyncio.to_thread(check)
        return await value if inspect.isawaitable(value) else value  # a lambda that returns a coroutine

    looked = check if inspect.iscoroutinefunction(check) else in_thread
    return await shared_eventually(looked, what, timeout_s=within_s, every_s=every_s)


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
    "eventually",
    "free_port",
    "insecure_tls",
    "node_object",
    "nodes_ready",
    "stop",
    "wait_until",
    "write_kubeconfig",
]
