"""The agent's own durable JetStream consumer on FLEET_AGENT: decode, check, execute, ack after commit.

One durable pull consumer per node with work (`agent_consumer(cluster, node)`), created by the orchestrator
before it sends the node's first command (flotilla_runtime.agent_consumers), filtered to the node's subjects,
one message in flight (`max_ack_pending=1`) so steps run in order. The agent reads it only when woken by a
command, at start and after a reconnect (flotilla_runtime.agent_inbox), on the runtime's one pull loop
(flotilla_runtime.pullloop); at rest it holds no pull request. Long steps send in-progress acks. Bad input
(undecodable, unknown schema version, another node's command, unknown verb) is dead-lettered, never
executed. A node that cannot be reached is waited for (the journal says the step is running; the
orchestrator's step deadline bounds it); a command whose execution raises is retried with back-off and
dead-lettered at its max deliveries.
"""

from __future__ import annotations

import asyncio
import contextlib

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig

from flotilla_contracts import subjects
from flotilla_contracts.errors import ErrorCode
from flotilla_contracts.streams import FLEET_AGENT, agent_consumer
from flotilla_contracts.subjects import Service
from flotilla_contracts.v1.agent import NodeStepCommand, RefusalReason
from flotilla_node_agent.agent_metrics import AgentMetrics, CommandStats
from flotilla_node_agent.domain import wrong_target
from flotilla_node_agent.steps import Ack, StepRunner
from flotilla_runtime import codec, telemetry
from flotilla_runtime.agent_inbox import AgentInbox
from flotilla_runtime.errors import RequestError
from flotilla_runtime.logs import BoundLogger
from flotilla_runtime.pullloop import ACK, DeadLetters, Outcome, PullLoop, one_at_a_time
from flotilla_runtime.store import Store

STEP_VERB = "step"
SIM_RESTART_S = 2.0


class CommandConsumer:
    """Pulls one node's commands and hands each to the step runner; the pull loop settles its Outcome."""

    def __init__(
        self,
        nc: Client,
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
        max_deliveries: int = 10,
        gate: asyncio.Semaphore | None = None,
        metrics: AgentMetrics | None = None,
    ) -> None:
        self.nc, self.js, self.store, self.runner, self.log = nc, js, store, runner, log
        self.cluster_id, self.node_id = cluster_id, node_id
        self.instance_id = instance_id
        self.ack_wait_s = ack_wait_s
        self.fetch_timeout_s = fetch_timeout_s
        self.max_message_bytes = max_message_bytes
        self.gate = gate or asyncio.Semaphore(1)  # packed agents create their consumers a few at a time
        self.durable = agent_consumer(cluster_id, node_id)
        self.filter = subjects.agent_commands_for(cluster_id, node_id)
        self.step_subject = subjects.agent_command(cluster_id, node_id, STEP_VERB)
        # The process's shared counters when it has them (one set on /metrics, whatever the agent rebuilds).
        self.metrics = metrics
        self.stats = metrics.commands if metrics is not None else CommandStats()
        self.loop = PullLoop(
            stream=FLEET_AGENT.name,
            config=self.config(),
            process=one_at_a_time(self.handle, log),
            dead_letters=DeadLetters(store, Service.NODE_AGENT.value, instance_id, cluster_id=cluster_id),
            log=log,
            max_deliveries=max_deliveries,
            batch=1,
            fetch_timeout_s=fetch_timeout_s,
            pause_s=1.0,
            gate=self.gate,
            stats=self.stats.loop,
        )
        self.idle = self.loop.idle
        self.inbox = AgentInbox(nc, js, self.loop, create=False)

    def config(self) -> ConsumerConfig:
        """The consumer to bind (the orchestrator created it: flotilla_runtime.agent_consumers)."""
        return ConsumerConfig(name=self.durable, durable_name=self.durable, filter_subject=self.filter)

    async def run(self) -> None:
        await self.inbox.run()

    def keepalive_s(self) -> float:
        """How often a long step says it is in progress: a third of the consumer's ack wait (the creator's
        setting) or of ours, whichever is shorter."""
        bound = self.loop.bound
        theirs = bound.config.ack_wait if bound is not None and bound.config.ack_wait else self.ack_wait_s
        return min(theirs, self.ack_wait_s) / 3

    async def handle(self, msg: Msg) -> Outcome:
        headers = msg.headers or {}
        if msg.subject != self.step_subject:
            verb = msg.subject.rsplit(".", 1)[-1]
            return Outcome.dead_letter(ErrorCode.WRONG_SCHEMA, f"agent verb {verb!r} is not served by node agents")
        try:
            command = codec.decode(msg.data, NodeStepCommand, headers=headers, max_bytes=self.max_message_bytes)
        except RequestError as exc:
            return Outcome.dead_letter(exc.code, exc.message)
        mismatch = wrong_target(command, self.cluster_id, self.node_id)
        if mismatch:
            if self.metrics is not None:
                self.metrics.refusal(command.step, RefusalReason.WRONG_NODE)
            return Outcome.dead_letter(ErrorCode.SUBJECT_MISMATCH, mismatch)
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
            self.stats.handled += 1
            return ACK
        if result.ack is Ack.RETRY:
            return Outcome.wait(result.retry_in_s, "the node cannot be reached; the journal says the step is running")
        # A simulated crash of one packed agent: as if its process restarted a moment later.
        self.stats.dropped += 1
        return Outcome.wait(SIM_RESTART_S, "simulated agent crash")

    async def _keep_alive(self, msg: Msg) -> None:
        """In-progress acks every third of ack_wait, so a long step is not redelivered under us."""
        while True:
            await asyncio.sleep(self.keepalive_s())  # sleep: the in-progress ack's period
            with contextlib.suppress(nats.errors.Error):
                await msg.in_progress()
