"""Helpers for the upgrade-orchestrator's cross-process tests and benchmark.

- `publish_fleet`: synthetic registration (ClusterApproved, NodeAdded) and heartbeat events in FLEET_EVENTS.
- `FakeAgents`: node-agents in one process: woken by each command on a node's step subject, each node drains
  the consumer the orchestrator created for it in FLEET_AGENT,
  a journal by command id (a redelivered command is answered, never re-run), simulated nodes, reports
  (accepted, then succeeded or failed) published to FLEET_EVENTS. It checks I1, I2, I3, I4, I6 and I9 as
  commands run and records every violation.
- `EventLog`: FLEET_EVENTS and FLEET_REPORTS read back, checked by the one independent invariant oracle
  (tests/e2e/rollout_invariants.py) that the e2e and chaos tests use.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from integration_support import fleet_events
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from rollout_invariants import Event, check, kubelet_skew

from flotilla_contracts import catalogue
from flotilla_contracts.envelope import H_MSG_ID, H_SCHEMA, Message, schema_id
from flotilla_contracts.streams import FLEET_AGENT, agent_consumer
from flotilla_contracts.v1.agent import (
    NodeFacts,
    NodeStepCommand,
    NodeStepReported,
    RefusalReason,
    StepKind,
    StepOutcome,
    step_report,
)
from flotilla_contracts.v1.common import NodeRole
from flotilla_contracts.v1.heartbeat import ClusterHealth, ClusterHealthChanged
from flotilla_contracts.v1.registration import ApprovalSource, ClusterIdentity, ClusterInfo, ClusterState
from flotilla_contracts.v1.registration_events import ClusterApproved, NodeAdded
from flotilla_kube.versions import parse_version
from flotilla_runtime.bus import ensure_streams

_enc = msgspec.json.Encoder()


def now() -> datetime:
    return datetime.now(UTC)


async def publish(js: JetStreamContext, message: Message, **ids: str) -> None:
    subject = catalogue.subject_for(type(message), **ids)
    await js.publish(
        subject, _enc.encode(message), headers={H_SCHEMA: schema_id(type(message)), H_MSG_ID: uuid.uuid4().hex}
    )


@dataclass
class SimNode:
    cluster_id: str
    node_id: str
    role: NodeRole
    version: str
    cordoned_by: str = ""
    fail: set[str] = field(default_factory=set)


async def publish_fleet(
    js: JetStreamContext, clusters: int, nodes: int, version: str = "v1.29.6", cps: int = 1, prefix: str = "c"
) -> dict[tuple[str, str], SimNode]:
    """Approved clusters with their node inventory, as registration would publish them; returns the nodes."""
    await ensure_streams(js)
    fleet: dict[tuple[str, str], SimNode] = {}
    futures = []
    for c in range(clusters):
        cid = f"{prefix}{c:04d}"
        info = ClusterInfo(
            cluster_id=cid,
            identity=ClusterIdentity(uid=f"uid-{cid}", name=cid, kubernetes_version=version),
            state=ClusterState.APPROVED,
            joined_at=now(),
            updated_at=now(),
        )
        event = ClusterApproved(cluster=info, approved_by=ApprovalSource.ADMIN, occurred_at=now())
        futures.append(await _publish_async(js, event, cluster_id=cid))
        for n in range(nodes):
            role = NodeRole.CONTROL_PLANE if n < cps else NodeRole.WORKER
            nid = f"{cid}-n{n:02d}"
            fleet[(cid, nid)] = SimNode(cid, nid, role, version)
            facts = NodeFacts(node_id=nid, node_name=nid, role=role, kubelet_version=version)
            futures.append(
                await _publish_async(
                    js, NodeAdded(cluster_id=cid, node=facts, occurred_at=now()), cluster_id=cid, node_id=nid
                )
            )
            if len(futures) > 2000:
                await asyncio.gather(*futures)
                futures = []
    await asyncio.gather(*futures)
    return fleet


async def _publish_async(js: JetStreamContext, message: Message, **ids: str) -> Any:
    subject = catalogue.subject_for(type(message), **ids)
    return await js.publish_async(
        subject, _enc.encode(message), headers={H_SCHEMA: schema_id(type(message)), H_MSG_ID: uuid.uuid4().hex}
    )


async def cluster_health(js: JetStreamContext, cluster_id: str, to: ClusterHealth) -> None:
    await publish(
        js, ClusterHealthChanged(cluster_id=cluster_id, to=to, reason="test", occurred_at=now()), cluster_id=cluster_id
    )


@dataclass
class FakeAgents:
    """Every node's agent in one process; `violations` lists each broken invariant it saw."""

    nc: Client
    nodes: dict[tuple[str, str], SimNode]
    max_unavailable: int = 1
    step_s: float = 0.0
    journal: dict[str, NodeStepReported] = field(default_factory=dict)
    effects: Counter[tuple[str, str, str, int]] = field(default_factory=Counter)
    epochs: dict[tuple[str, str], int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    executed: int = 0
    last_step_at: float = 0.0
    first_step_at: float = 0.0
    _task: asyncio.Task[None] | None = None
    _busy: set[tuple[str, str]] = field(default_factory=set)
    _pending: set[asyncio.Task[None]] = field(default_factory=set)
    _draining: set[tuple[str, str]] = field(default_factory=set)
    _again: set[tuple[str, str]] = field(default_factory=set)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # nats-py turns a fetch cancelled while its connection closes into ConnectionClosedError.
            with contextlib.suppress(asyncio.CancelledError, nats.errors.ConnectionClosedError):
                await self._task
        for task in list(self._pending):
            task.cancel()

    async def _run(self) -> None:
        """As real agents do (flotilla_runtime.agent_inbox): a command on a node's subject wakes it, and it
        drains the consumer the orchestrator created for that node."""
        js = self.nc.jetstream()
        await ensure_streams(js)
        woken: asyncio.Queue[tuple[str, str]] = asyncio.Queue()

        async def wake(msg: Msg) -> None:
            _, _, _, cluster_id, node_id, _ = msg.subject.split(".")
            woken.put_nowait((cluster_id, node_id))

        sub = await self.nc.subscribe("fleet.v1.agent.*.*.step", cb=wake)
        for node in self.nodes:  # what was sent before they started
            woken.put_nowait(node)
        try:
            while True:
                node = await woken.get()
                if node not in self._draining:
                    self._draining.add(node)
                    task = asyncio.create_task(self._drain(js, node))
                    self._pending.add(task)
                    task.add_done_callback(self._pending.discard)
                else:
                    self._again.add(node)
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def _drain(self, js: JetStreamContext, node: tuple[str, str]) -> None:
        try:
            while True:
                self._again.discard(node)
                try:
                    await js.consumer_info(FLEET_AGENT.name, agent_consumer(*node))
                except nats.js.errors.NotFoundError:
                    return  # nothing was ever sent to it
                sub = await js.pull_subscribe_bind(durable=agent_consumer(*node), stream=FLEET_AGENT.name)
                try:
                    while True:
                        try:
                            messages = await sub.fetch(1, timeout=1.0)  # a wake-up may come before the stream stored it
                        except (nats.errors.TimeoutError, TimeoutError):
                            break
                        for msg in messages:
                            command = msgspec.json.decode(msg.data, type=NodeStepCommand)
                            if self.step_s > 0:
                                await asyncio.sleep(self.step_s)  # sleep: the fake agent's simulated step duration
                            await self._handle(js, msg, command)
                finally:
                    await sub.unsubscribe()
                if node not in self._again:
                    return
        finally:
            self._draining.discard(node)

    async def _handle(self, js: JetStreamContext, msg: Msg, command: NodeStepCommand) -> None:
        report = self.execute(command)
        accepted = msgspec.structs.replace(report, outcome=StepOutcome.ACCEPTED, reason="", message="")
        subject = catalogue.subject_for(NodeStepReported, cluster_id=command.cluster_id, node_id=command.node_id)
        for item, suffix in ((accepted, "accepted"), (report, report.outcome.value)):
            await js.publish_async(
                subject,
                _enc.encode(item),
                headers={H_SCHEMA: schema_id(NodeStepReported), H_MSG_ID: f"{command.command_id}-{suffix}"},
            )
        await msg.ack()

    def execute(self, command: NodeStepCommand) -> NodeStepReported:
        if command.command_id in self.journal:
            return msgspec.structs.replace(self.journal[command.command_id], replayed=True)
        key = (command.rollout_id, command.node_id)
        if command.epoch < self.epochs.get(key, 0):
            return self._report(command, StepOutcome.REFUSED, refusal=RefusalReason.STALE_EPOCH)
        self.epochs[key] = command.epoch
        node = self.nodes[(command.cluster_id, command.node_id)]
        effect = (command.rollout_id, command.node_id, command.step.value, command.attempt)
        self.effects[effect] += 1
        if self.effects[effect] > 1:
            self.violations.append(f"I4: {effect} took effect twice")
        self.executed += 1
        self.last_step_at = time.monotonic()
        self.first_step_at = self.first_step_at or self.last_step_at
        extra: dict[str, Any] = {}
        if command.step.value in node.fail:
            report = self._report(command, StepOutcome.FAILED, reason="InjectedFailure", message="injected failure")
        else:
            if command.step is StepKind.CORDON:
                extra["was_cordoned"] = bool(node.cordoned_by)
                node.cordoned_by = node.cordoned_by or command.rollout_id
                down = sum(1 for n in self._peers(node) if n.cordoned_by)
                if down > self.max_unavailable:
                    self.violations.append(f"I1: {down} nodes cordoned in {node.cluster_id}")
            elif command.step is StepKind.UPGRADE:
                self._check_skew(node, command.target.kubernetes_version)
                node.version = command.target.kubernetes_version
            elif command.step is StepKind.VERIFY:
                extra["kubelet_version"] = node.version
            elif command.step is StepKind.UNCORDON:
                if node.cordoned_by != command.rollout_id:
                    self.violations.append(f"I9: uncordon of {node.node_id} not cordoned by {command.rollout_id}")
                node.cordoned_by = ""
            elif command.step is StepKind.ROLLBACK and command.previous is not None:
                node.version = command.previous.kubernetes_version
                extra["kubelet_version"] = node.version
            report = self._report(command, StepOutcome.SUCCEEDED, **extra)
        self.journal[command.command_id] = report
        return report

    def _peers(self, node: SimNode) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.cluster_id == node.cluster_id]

    def _check_skew(self, node: SimNode, target: str) -> None:
        new = parse_version(target)
        skews = [kubelet_skew(target, n.version) for n in self._peers(node) if n.role is NodeRole.CONTROL_PLANE]
        if node.role is NodeRole.WORKER and any(skews):
            self.violations.append(f"I2/I3: worker {node.node_id} to {target}: {next(s for s in skews if s)}")
        if node.role is NodeRole.CONTROL_PLANE:
            others = [
                n for n in self._peers(node) if n.role is NodeRole.CONTROL_PLANE and n.cordoned_by and n is not node
            ]
            if others:
                self.violations.append(f"I2: control-plane nodes of {node.cluster_id} moved together")
            if new.minor - parse_version(node.version).minor > 1:
                self.violations.append(f"I3: {node.node_id} skips a minor")

    def _report(self, command: NodeStepCommand, outcome: StepOutcome, **extra: Any) -> NodeStepReported:
        return step_report(command, outcome, now(), **extra)


@dataclass
class EventLog:
    """FLEET_EVENTS and FLEET_REPORTS in stream order: (subject, schema, body), as the invariant oracle reads them."""

    events: list[Event]

    @classmethod
    async def read(cls, nc: Client) -> EventLog:
        """Every event that decodes (a test may publish garbage on purpose: the orchestrator dead-letters it)."""
        events: list[Event] = []
        for msg in await fleet_events(nc):
            with contextlib.suppress(msgspec.DecodeError):
                events.append((msg.subject, (msg.headers or {}).get(H_SCHEMA, ""), msgspec.json.decode(msg.data)))
        return cls(events)

    def of(self, schema: str) -> list[dict[str, Any]]:
        return [body for _, s, body in self.events if s == schema]

    def violations(self, max_unavailable: int, max_clusters: int) -> list[str]:
        """I1-I9 as the log tells them, by the one independent oracle (tests/e2e/rollout_invariants.py)."""
        return check(self.events, max_unavailable=max_unavailable, max_clusters=max_clusters).violations
