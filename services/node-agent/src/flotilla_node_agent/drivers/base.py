"""The driver interface: node facts, cordon, uncordon, drain, upgrade, verify; and how a step fails."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from flotilla_contracts.v1.agent import DrainOptions, KubeadmAction, NodeFacts, StepProgress, TargetVersions
from flotilla_contracts.v1.common import PodRef
from flotilla_contracts.v1.heartbeat import ApiServerHealth

# Marks a node we cordoned, with the rollout that did it; only such nodes are uncordoned by us (I9).
CORDONED_BY_ANNOTATION = "flotilla.dev/cordoned-by"

ProgressCallback = Callable[[StepProgress], Awaitable[None]]


class StepFailed(Exception):
    """The step could not be done; `reason` is a short stable word, `message` says why to a person."""

    def __init__(self, reason: str, message: str, blocking_pods: list[PodRef] | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.blocking_pods = blocking_pods or []


class AgentCrashed(Exception):
    """An injected crash when agents share a process (packed sim): the agent drops the command
    unacknowledged, as a dead process would, and JetStream redelivers it."""


class DriverUnavailable(Exception):
    """The node's API (or the host) cannot be reached right now; the command is retried later."""


@dataclass(frozen=True)
class CordonResult:
    """`was_cordoned`: the node was unschedulable before us, so it is not ours to uncordon (I9)."""

    was_cordoned: bool
    changed: bool


@dataclass(frozen=True)
class UncordonResult:
    changed: bool
    message: str = ""


@dataclass(frozen=True)
class DrainResult:
    """`recordoned`: how many times the drain found the node schedulable again and cordoned it with our mark."""

    evicted: list[PodRef] = field(default_factory=list)
    skipped: list[PodRef] = field(default_factory=list)
    recordoned: int = 0


class NodeDriver(Protocol):
    """Everything an agent does to its node. Each call re-checks the node first, so it is safe to repeat."""

    @property
    def node_name(self) -> str: ...

    async def facts(self) -> NodeFacts:
        """Identity, role, versions, labels, resources and conditions, read now."""
        ...

    async def cordon(self, owner: str) -> CordonResult:
        """Make the node unschedulable and mark it as cordoned by `owner` (a rollout id)."""
        ...

    async def uncordon(self, owner: str) -> UncordonResult:
        """Make the node schedulable again, only when `owner` cordoned it (I9)."""
        ...

    async def drain(self, owner: str, options: DrainOptions, progress: ProgressCallback) -> DrainResult:
        """Evict the node's pods (I5), honouring disruption budgets; StepFailed naming blockers on timeout.

        Before each round of evictions the node must be unschedulable: found schedulable again (uncordoned by a
        person or a tool, or a resumed drain), it is cordoned again with `owner`'s mark, and a progress report
        says so. A cordon that is someone else's is left as it is."""
        ...

    async def upgrade(self, target: TargetVersions, action: KubeadmAction | None) -> None:
        """Move the node's Kubernetes packages to `target` (through the configured executor)."""
        ...

    async def verify(self, target: TargetVersions, timeout_s: float) -> str:
        """Wait until the node is Ready at the target kubelet version; returns the kubelet version seen."""
        ...

    async def api_server(self) -> ApiServerHealth | None:
        """For a control-plane node: its API server's /livez, /readyz and version; None on workers."""
        ...

    async def close(self) -> None: ...
