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

BIN = bin_dir()


async def eventually(what: str, check: Callable[[], Any], within_s: float = 60.0, every_s: float = 0.2) -> Any:
    """Poll `check` until it returns something truthy and return it; fail naming `what` at the deadline. A plain
    function runs in a thread (kubectl and raw API calls block), a coroutine function on the loop. `every_s` is
    only the polling interval: the wait ends on the condition, never on time."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while True:
        value = await check() if inspect.iscoroutinefunction(check) else await asyncio.to_thread(check)
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"{what}: not true within {within_s:.0f} s")
        await asyncio.sleep(every_s)


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
