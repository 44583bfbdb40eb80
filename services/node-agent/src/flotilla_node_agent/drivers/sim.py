"""The simulated driver: an in-memory node with pods and disruption budgets, timed steps and faults.

Deterministic for a seed: `SimNodeSpec.generate(seed, cluster, index, ...)` draws the pods and the faults
(drain blocked by a budget, upgrade fails, NotReady after upgrade, agent crash mid-step) from a
`random.Random` seeded by (seed, cluster, node). A fault placed by name (`named`) gets its parameters
(the blocking budget, the crash point) from that same generator, as a drawn one does. Timeouts are capped
(`max_wait_s`) so a blocked drain fails in seconds, not in the plan's ten minutes.

The node survives agent restarts with `state_path` (one agent per process: a file written atomically
after every change, which the crash tests need) or a `keeper` (the packed sim's journal database): the
state is saved before the driver call returns, so before the step is reported done. What is saved is what
a real node keeps when its agent restarts: kubelet version, readiness, cordon and who cordoned, the pods
left, and the faults that already fired (a crash point fires once; `upgrade_fails_once` fails once).
The spec (pods, budgets, faults, crash points) is drawn again from the seed at every start.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import msgspec

from flotilla_contracts.ids import node_token
from flotilla_contracts.sim import ALL_FAULTS, FAULTS, node_name
from flotilla_contracts.v1.agent import DrainOptions, KubeadmAction, NodeFacts, StepProgress, TargetVersions
from flotilla_contracts.v1.common import ConditionStatus, NodeCondition, NodeConditionType, NodeRole, PodRef, Resources
from flotilla_contracts.v1.heartbeat import ApiServerHealth, ProbeResult
from flotilla_node_agent.drivers.base import (
    AgentCrashed,
    CordonResult,
    DrainResult,
    ProgressCallback,
    StepFailed,
    UncordonResult,
)
from flotilla_node_agent.executors.base import Executor, ExecutorError

CRASH_POINTS = tuple(
    f"{step}:{when}" for step in ("cordon", "drain", "upgrade", "uncordon") for when in ("before", "after")
)


class SimPod(msgspec.Struct, kw_only=True):
    namespace: str
    name: str
    owner: str = "ReplicaSet"  # ReplicaSet | DaemonSet | Node (mirror) | "" (unmanaged)
    budget: str = ""  # name of the PodDisruptionBudget covering it
    empty_dir: bool = False


class SimNodeState(msgspec.Struct, kw_only=True):
    """Everything that changes: what a restart must find again."""

    kubelet_version: str
    ready: bool = True
    unschedulable: bool = False
    cordoned_by: str = ""
    pods: list[SimPod] = []
    effects: dict[str, int] = {}  # side effects that took place, by step: the crash tests count them
    crashes_done: list[str] = []
    upgrade_failures: int = 0


class SimNodeSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What does not change: name, role, faults, durations."""

    cluster: str
    name: str
    role: NodeRole = NodeRole.WORKER
    version: str = "v1.29.6"
    pods: int = 6
    budgets: dict[str, int] = {}  # budget name -> disruptions allowed (0 blocks for ever)
    faults: tuple[str, ...] = ()
    crash_at: tuple[str, ...] = ()  # "<step>:before" | "<step>:after"
    step_s: float = 0.0
    max_wait_s: float = 3.0

    @classmethod
    def generate(
        cls,
        seed: int,
        cluster: str,
        index: int,
        *,
        version: str,
        role: NodeRole = NodeRole.WORKER,
        fail_rate: float = 0.0,
        step_s: float = 0.0,
        named: tuple[str, ...] = (),
    ) -> SimNodeSpec:
        """The node's pods and faults: one drawn with probability `fail_rate`, plus the `named` ones."""
        unknown = [fault for fault in named if fault not in ALL_FAULTS]
        if unknown:
            raise ValueError(f"unknown faults {unknown}; faults: {', '.join(ALL_FAULTS)}")
        rng = random.Random(f"{seed}/{cluster}/{index}")
        drawn = (rng.choice(FAULTS),) if rng.random() < fail_rate else ()
        faults = drawn + tuple(fault for fault in dict.fromkeys(named) if fault not in drawn)
        budgets = {"web": 0 if "drain_blocked" in faults else 1}
        crash_at = (rng.choice(CRASH_POINTS),) if "agent_crash" in faults else ()
        return cls(
            cluster=cluster,
            name=node_name(cluster, index),
            role=role,
            version=version,
            pods=rng.randint(2, 8),
            budgets=budgets,
            faults=faults,
            crash_at=crash_at,
            step_s=step_s,
        )


def initial_state(spec: SimNodeSpec) -> SimNodeState:
    pods = [SimPod(namespace="kube-system", name=f"kube-proxy-{spec.name}", owner="DaemonSet")]
    pods += [SimPod(namespace="default", name=f"web-{spec.name}-{i}", budget="web") for i in range(spec.pods)]
    return SimNodeState(kubelet_version=spec.version, pods=pods)


class StateKeeper(Protocol):
    """Where simulated nodes keep their state across agent restarts (the packed sim's journal database)."""

    def saved(self, node: str) -> SimNodeState | None:
        """The node's state as last saved, or None for a node never saved (a new node)."""
        ...

    async def save(self, node: str, state: SimNodeState) -> None:
        """Make the state durable; returns once it is."""
        ...


@dataclass
class SimDriver:
    """A simulated node behind the driver interface; `executor` (optional) runs on upgrade as on a host."""

    spec: SimNodeSpec
    executor: Executor | None = None
    state_path: Path | None = None
    sigkill_on_crash: bool = False  # one agent per process: really die; packed: raise AgentCrashed
    keeper: StateKeeper | None = None
    state: SimNodeState = field(init=False)
    _unsaved: bool = field(default=False, init=False)  # a save failed: the next step saves first

    def __post_init__(self) -> None:
        saved = self.keeper.saved(self.spec.name) if self.keeper is not None else None
        if self.state_path is not None and self.state_path.exists():
            self.state = msgspec.json.decode(self.state_path.read_bytes(), type=SimNodeState)
        elif saved is not None:
            self.state = saved
        else:
            self.state = initial_state(self.spec)
            self._write_file()

    @property
    def node_name(self) -> str:
        return self.spec.name

    def _write_file(self) -> None:
        if self.state_path is None:
            return
        fd, tmp = tempfile.mkstemp(dir=self.state_path.parent, prefix=".sim-")
        with os.fdopen(fd, "wb") as handle:
            handle.write(msgspec.json.encode(self.state))
        os.replace(tmp, self.state_path)

    async def _save(self) -> None:
        self._unsaved = True
        self._write_file()
        if self.keeper is not None:
            await self.keeper.save(self.spec.name, self.state)
        self._unsaved = False

    async def _enter(self, step: str) -> None:
        """The start of every step: save what a failed save left (before a resumed step can report it done),
        then the step's `before` crash point."""
        if self._unsaved:
            await self._save()
        await self._crash_point(f"{step}:before")

    async def _effect(self, step: str) -> None:
        self.state.effects[step] = self.state.effects.get(step, 0) + 1
        await self._save()

    async def _crash_point(self, point: str) -> None:
        if point not in self.spec.crash_at or point in self.state.crashes_done:
            return
        self.state.crashes_done.append(point)
        await self._save()
        if self.sigkill_on_crash:
            os.kill(os.getpid(), signal.SIGKILL)
        raise AgentCrashed(f"injected crash at {point}")

    async def _take_time(self, share: float = 1.0) -> None:
        if self.spec.step_s > 0:
            await asyncio.sleep(self.spec.step_s * share)

    async def facts(self) -> NodeFacts:
        ready = ConditionStatus.TRUE if self.state.ready else ConditionStatus.FALSE
        resources = Resources(cpu_millis=4000, memory_bytes=16 << 30, pods=110)
        return NodeFacts(
            node_id=node_token(self.spec.name),
            node_name=self.spec.name,
            role=self.spec.role,
            kubelet_version=self.state.kubelet_version,
            kube_proxy_version=self.state.kubelet_version,
            # The simulated API server runs at its node's version (as kubeadm moves both together).
            api_server_version=self.state.kubelet_version if self.spec.role is NodeRole.CONTROL_PLANE else None,
            os_image="Simulated Linux",
            container_runtime="sim://1.0",
            architecture="amd64",
            labels={"kubernetes.io/hostname": self.spec.name, "flotilla.dev/sim": "true"},
            unschedulable=self.state.unschedulable,
            capacity=resources,
            allocatable=resources,
            conditions=[NodeCondition(type=NodeConditionType.READY, status=ready, reason="KubeletReady")],
            pod_count=len(self.state.pods),
        )

    async def cordon(self, owner: str) -> CordonResult:
        await self._enter("cordon")
        await self._take_time(0.2)
        if self.state.unschedulable:
            return CordonResult(was_cordoned=self.state.cordoned_by == "", changed=False)
        self.state.unschedulable, self.state.cordoned_by = True, owner
        await self._effect("cordon")
        await self._crash_point("cordon:after")
        return CordonResult(was_cordoned=False, changed=True)

    async def uncordon(self, owner: str) -> UncordonResult:
        await self._enter("uncordon")
        await self._take_time(0.2)
        if not self.state.unschedulable:
            return UncordonResult(changed=False, message="node is already schedulable")
        if self.state.cordoned_by != owner:
            who = self.state.cordoned_by or "someone else"
            return UncordonResult(changed=False, message=f"node was cordoned by {who}; left cordoned (I9)")
        self.state.unschedulable, self.state.cordoned_by = False, ""
        await self._effect("uncordon")
        await self._crash_point("uncordon:after")
        return UncordonResult(changed=True)

    async def drain(self, owner: str, options: DrainOptions, progress: ProgressCallback) -> DrainResult:
        await self._enter("drain")
        recordoned = 0
        if not self.state.unschedulable:  # schedulable again (e.g. a resumed drain): our cordon first
            self.state.unschedulable, self.state.cordoned_by = True, owner
            recordoned = 1
            await self._save()
            await progress(StepProgress(phase="re-cordoned: the node was schedulable again"))
        evictable = [p for p in self.state.pods if p.owner not in ("DaemonSet", "Node")]
        skipped = [
            PodRef(namespace=p.namespace, name=p.name, reason=f"{p.owner} pod")
            for p in self.state.pods
            if p not in evictable
        ]
        unmanaged = [p for p in evictable if not p.owner and not options.evict_unmanaged_pods]
        local = [p for p in evictable if p.empty_dir and not options.delete_emptydir_data]
        if unmanaged or local:
            refs = [
                PodRef(namespace=p.namespace, name=p.name, reason="unmanaged or emptyDir") for p in unmanaged + local
            ]
            raise StepFailed(
                "pods_not_evictable", "pods without a controller or with emptyDir data block the drain", refs
            )
        evicted: list[PodRef] = []
        deadline = asyncio.get_running_loop().time() + min(options.timeout_s, self.spec.max_wait_s)
        total = len(evictable)
        for pod in evictable:
            while self.spec.budgets.get(pod.budget, 1) <= 0:
                if asyncio.get_running_loop().time() >= deadline:
                    blocking = [
                        PodRef(namespace=p.namespace, name=p.name, reason=f"PodDisruptionBudget {p.budget}")
                        for p in self.state.pods
                        if p in evictable
                    ]
                    raise StepFailed("drain_timeout", f"{len(blocking)} pods could not be evicted in time", blocking)
                await asyncio.sleep(min(options.eviction_retry_s, 0.2))
            await self._take_time(1.0 / max(total, 1))
            self.state.pods.remove(pod)
            evicted.append(PodRef(namespace=pod.namespace, name=pod.name))
            await self._save()
            await progress(
                StepProgress(
                    pods_total=total, pods_evicted=len(evicted), pods_remaining=total - len(evicted), phase="evicting"
                )
            )
        if evicted:
            await self._effect("drain")
        await self._crash_point("drain:after")
        return DrainResult(evicted=evicted, skipped=skipped, recordoned=recordoned)

    async def upgrade(self, target: TargetVersions, action: KubeadmAction | None) -> None:
        await self._enter("upgrade")
        want = target.kubelet_version or target.kubernetes_version
        if self.state.kubelet_version == want:
            return  # already done (an interrupted step resumed): nothing to repeat
        await self._take_time()
        if "upgrade_fails" in self.spec.faults:
            raise StepFailed("upgrade_failed", "simulated: the package install failed on the host")
        if "upgrade_fails_once" in self.spec.faults and not self.state.upgrade_failures:
            self.state.upgrade_failures += 1
            await self._save()
            raise StepFailed("upgrade_failed", "simulated: the package mirror timed out (a retry succeeds)")
        if self.executor is not None:
            try:
                await self.executor.upgrade(target, action, self.spec.role)
            except ExecutorError as exc:
                raise StepFailed("upgrade_failed", str(exc)) from exc
        self.state.kubelet_version = want
        self.state.ready = "not_ready_after_upgrade" not in self.spec.faults
        await self._effect("upgrade")
        await self._crash_point("upgrade:after")

    async def verify(self, target: TargetVersions, timeout_s: float) -> str:
        await self._enter("verify")
        want = target.kubelet_version or target.kubernetes_version
        deadline = asyncio.get_running_loop().time() + min(timeout_s, self.spec.max_wait_s)
        await self._take_time(0.5)
        while not (self.state.ready and self.state.kubelet_version == want):
            if asyncio.get_running_loop().time() >= deadline:
                state = "Ready" if self.state.ready else "NotReady"
                raise StepFailed(
                    "verify_timeout", f"node is {state} at {self.state.kubelet_version}, want Ready at {want}"
                )
            await asyncio.sleep(0.1)
        return self.state.kubelet_version

    async def api_server(self) -> ApiServerHealth | None:
        if self.spec.role is not NodeRole.CONTROL_PLANE:
            return None
        up = ProbeResult.OK if self.state.ready else ProbeResult.FAILED
        return ApiServerHealth(livez=up, readyz=up, version=self.state.kubelet_version)

    async def close(self) -> None:
        await self._save()
