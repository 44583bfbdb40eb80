"""Helpers for the node-agent integration tests: commands on the real bus, reports and dead letters."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from flotilla_contracts import catalogue, subjects
from flotilla_contracts.envelope import H_MSG_ID, H_SCHEMA, schema_id
from flotilla_contracts.v1.agent import NodeStepCommand, NodeStepReported, StepKind, StepOutcome, TargetVersions
from flotilla_contracts.v1.deadletter import DeadLettered
from flotilla_runtime.agent_consumers import AgentConsumers

TARGET = TargetVersions(kubernetes_version="v1.30.2")
STEPS = (StepKind.CORDON, StepKind.DRAIN, StepKind.UPGRADE, StepKind.VERIFY, StepKind.UNCORDON)


def step_command(step: StepKind, cluster: str = "c1", node: str = "n1", **fields: Any) -> NodeStepCommand:
    now = datetime.now(UTC)
    values: dict[str, Any] = {
        "command_id": f"cmd-{cluster}-{node}-{step.value}-{fields.get('epoch', 1)}-{fields.get('attempt', 1)}",
        "rollout_id": "r1",
        "epoch": 1,
        "cluster_id": cluster,
        "node_id": node,
        "node_name": node,
        "step": step,
        "target": TARGET,
        "deadline": now + timedelta(minutes=5),
        "issued_at": now,
    }
    values.update(fields)
    return NodeStepCommand(**values)


async def send(
    nc: Client,
    command: NodeStepCommand,
    *,
    subject: str = "",
    body: bytes | None = None,
    schema: str | None = None,
    ack_wait_s: float = 3.0,
) -> None:
    """Publish to FLEET_AGENT as the orchestrator does: the node's consumer created first (with `ack_wait_s`),
    a fresh Nats-Msg-Id each time (a real duplicate)."""
    js = nc.jetstream()
    headers = {H_SCHEMA: schema or schema_id(NodeStepCommand), H_MSG_ID: uuid.uuid4().hex}
    target = subject or subjects.agent_command(command.cluster_id, command.node_id, "step")
    await AgentConsumers(lambda: js, ack_wait_s=ack_wait_s).prepare([{"subject": target}])
    await js.publish(target, body if body is not None else msgspec.json.encode(command), headers=headers)


class Watch:
    """Collects node-step reports and dead letters from the bus (core subscriptions on the event subjects)."""

    def __init__(self) -> None:
        self.reports: list[NodeStepReported] = []
        self.dead: list[DeadLettered] = []
        self.dead_subjects: list[str] = []
        self.changed = asyncio.Event()

    async def start(self, nc: Client) -> None:
        async def on_report(msg: Msg) -> None:
            self.reports.append(msgspec.json.decode(msg.data, type=NodeStepReported))
            self.changed.set()

        async def on_dead(msg: Msg) -> None:
            self.dead.append(msgspec.json.decode(msg.data, type=DeadLettered))
            self.dead_subjects.append(msg.subject)
            self.changed.set()

        await nc.subscribe(f"{subjects.EVT_PREFIX}.node-step.>", cb=on_report)
        await nc.subscribe(catalogue.subject_for(DeadLettered, service="node-agent"), cb=on_dead)
        await nc.subscribe(f"{subjects.EVT_PREFIX}.dead-letter.node-agent.*.recorded", cb=on_dead)  # per cluster

    def final(self, step: StepKind, **match: Any) -> list[NodeStepReported]:
        done = (StepOutcome.SUCCEEDED, StepOutcome.FAILED, StepOutcome.REFUSED)
        return [
            r
            for r in self.reports
            if r.step is step and r.outcome in done and all(getattr(r, k) == v for k, v in match.items())
        ]

    async def until(self, predicate: Any, within_s: float = 10.0) -> None:
        async with asyncio.timeout(within_s):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()
