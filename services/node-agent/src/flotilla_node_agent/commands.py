"""The agent's own durable JetStream consumer on FLEET_AGENT: decode, check, execute, ack after commit.

One durable pull consumer per node (`agent_consumer(cluster, node)`), filtered to the node's subjects,
one message in flight (`max_ack_pending=1`) so steps run in order. Long steps send in-progress acks.
Bad input (undecodable, unknown schema version, another node's command, unknown verb) is terminated
and dead-lettered, never executed.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from flotilla_contracts import subjects
from flotilla_contracts.errors import ErrorCode
from flotilla_contracts.streams import FLEET_AGENT, agent_consumer
from flotilla_contracts.subjects import Service
from flotilla_contracts.v1.agent import NodeStepCommand
from flotilla_node_agent.domain import wrong_target
from flotilla_node_agent.steps import Ack, StepRunner
from flotilla_runtime import codec, telemetry
from flotilla_runtime.consumers import pull
from flotilla_runtime.deadletters import dead_letter_message
from flotilla_runtime.errors import RequestError
from flotilla_runtime.logs import BoundLogger
from flotilla_runtime.store import Store

STEP_VERB = "step"
SIM_RESTART_S = 2.0


@dataclass
class ConsumerStats:
    executed: int = 0
    dead_lettered: int = 0
    retried: int = 0
    dropped: int = 0


class CommandConsumer:
    """Pulls one node's commands and hands each to the step runner; never raises out of `handle`."""

    def __init__(
        self,
        js: JetStreamContext,
        store: Store,
        runner: StepRunner,
        cluster_id: str,
        node_id: str,
        log: BoundLogger,
        *,
        instance_id: str = "",
        ack_wait_s: float = 30.0,
        fetch_timeout_s: float = 20.0,
        max_message_bytes: int = 256 * 1024,
        gate: asyncio.Semaphore | None = None,
    ) -> None:
        self.js, self.store, self.runner, self.log = js, store, runner, log
        self.cluster_id, self.node_id = cluster_id, node_id
        self.instance_id = instance_id
        self.ack_wait_s = ack_wait_s
        self.fetch_timeout_s = fetch_timeout_s
        self.max_message_bytes = max_message_bytes
        self.gate = gate or asyncio.Semaphore(1)  # packed agents create their consumers a few at a time
        self.durable = agent_consumer(cluster_id, node_id)
        self.filter = subjects.agent_commands_for(cluster_id, node_id)
        self.step_subject = subjects.agent_command(cluster_id, node_id, STEP_VERB)
        self.stats = ConsumerStats()
        self.idle = asyncio.Event()

    def config(self) -> ConsumerConfig:
        return ConsumerConfig(
            # `name` makes nats-py create it with the filter in the API subject, which is what an agent's
            # bus permissions allow (flotilla_contracts.permissions.agent_consumer_subjects).
            name=self.durable,
            durable_name=self.durable,
            filter_subject=self.filter,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait_s,
            max_ack_pending=1,
            max_deliver=-1,
            description=f"node-agent commands for {self.cluster_id}/{self.node_id}",
        )

    async def subscribe(self) -> Any:
        delay = 0.2
        while True:
            try:
                async with self.gate:
                    return await self.js.pull_subscribe(
                        self.filter, durable=self.durable, stream=FLEET_AGENT.name, config=self.config()
                    )
            except nats.js.errors.BadRequestError as exc:
                # e.g. the stream's consumer limit: a deployment problem someone must fix; keep trying.
                self.log.error("JetStream refused consumer %s: %s; retrying", self.durable, exc.description)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            except (
                nats.errors.TimeoutError,
                nats.js.errors.ServiceUnavailableError,
                nats.errors.NoRespondersError,
                nats.js.errors.NotFoundError,  # FLEET_AGENT not provisioned yet: the services create it
            ) as exc:
                self.log.warning("cannot create consumer %s yet (%s); retrying", self.durable, type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def run(self) -> None:
        sub = await self.subscribe()
        try:
            while True:
                messages, idle = await pull(sub, 1, self.fetch_timeout_s, pause_s=1.0)
                if idle:
                    self.idle.set()
                if not messages:
                    continue
                self.idle.clear()
                for msg in messages:
                    await self.handle(msg)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def handle(self, msg: Msg) -> None:
        headers = msg.headers or {}
        if msg.subject != self.step_subject:
            verb = msg.subject.rsplit(".", 1)[-1]
            await self._dead_letter(msg, ErrorCode.WRONG_SCHEMA, f"agent verb {verb!r} is not served by node agents")
            return
        try:
            command = codec.decode(msg.data, NodeStepCommand, headers=headers, max_bytes=self.max_message_bytes)
        except RequestError as exc:
            await self._dead_letter(msg, exc.code, exc.message)
            return
        mismatch = wrong_target(command, self.cluster_id, self.node_id)
        if mismatch:
            await self._dead_letter(msg, ErrorCode.SUBJECT_MISMATCH, mismatch)
            return
        keepalive = asyncio.create_task(self._keep_alive(msg))
        # Continue the rollout's trace: the step's reports (outbox events) carry this span's context.
        with telemetry.consumer_span(f"node-agent {command.step.value}", headers, msg.subject) as span:
            span.set_attribute("flotilla.rollout_id", command.rollout_id)
            span.set_attribute("flotilla.node_id", command.node_id)
            try:
                result = await self.runner.execute(command, msg.metadata.sequence.stream)
            finally:
                keepalive.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keepalive
        if result.ack is Ack.ACK:
            self.stats.executed += 1
            await msg.ack()
        elif result.ack is Ack.RETRY:
            self.stats.retried += 1
            await msg.nak(delay=result.retry_in_s)
        else:
            # A simulated crash of one packed agent: as if its process restarted a moment later.
            self.stats.dropped += 1
            await msg.nak(delay=SIM_RESTART_S)

    async def _keep_alive(self, msg: Msg) -> None:
        """In-progress acks every third of ack_wait, so a long step is not redelivered under us."""
        while True:
            await asyncio.sleep(self.ack_wait_s / 3)
            with contextlib.suppress(nats.errors.Error):
                await msg.in_progress()

    async def _dead_letter(self, msg: Msg, code: ErrorCode, reason: str) -> None:
        self.stats.dead_lettered += 1
        self.log.error("dead-lettering %s: %s", msg.subject, reason, extra={"code": str(code)})
        await dead_letter_message(
            self.store, msg, service=Service.NODE_AGENT.value, instance_id=self.instance_id, consumer=self.durable,
            code=code, reason=reason, cluster_id=self.cluster_id,
        )  # fmt: skip
