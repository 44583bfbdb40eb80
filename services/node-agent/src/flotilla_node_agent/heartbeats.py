"""Heartbeats at the interval the heartbeat service announces, on core NATS (volatile, high rate).

One node's agent sends its own (`HeartbeatSender`, on `fleet.v1.hb.<cluster>.<node>`, as the node's identity).
A process that speaks for several nodes of a cluster (the packed sim with `--batch-heartbeats`) sends them
together (`ClusterBeats`, one HeartbeatBatch on `fleet.v1.hb.<cluster>` a round, as the cluster's identity):
one message instead of one per node, which is what makes a heartbeat cheap at the hub (docs/heartbeat.md).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

import msgspec
import nats.errors
from nats.aio.client import Client

from flotilla_contracts import catalogue, subjects
from flotilla_contracts.envelope import H_SCHEMA, schema_id
from flotilla_contracts.v1.heartbeat import Heartbeat, HeartbeatBatch, HeartbeatConfig, HeartbeatConfigRequest
from flotilla_node_agent import __version__
from flotilla_node_agent.agent_metrics import AgentMetrics
from flotilla_node_agent.drivers.base import DriverUnavailable, NodeDriver, StepFailed
from flotilla_runtime import codec
from flotilla_runtime.logs import BoundLogger

_encoder = msgspec.json.Encoder()
_HEADERS = {H_SCHEMA: schema_id(Heartbeat)}
_BATCH_HEADERS = {H_SCHEMA: schema_id(HeartbeatBatch)}
PER_BATCH = 200  # heartbeats per HeartbeatBatch: about 130 kB, well under the service's 256 KiB message bound


class Interval:
    """The heartbeat interval: the service's announcement, else our default; one per process."""

    def __init__(self, default_s: float) -> None:
        self.seconds = default_s
        self.announced = False

    async def refresh(self, nc: Client, timeout_s: float = 2.0) -> bool:
        subject = catalogue.subject_for(HeartbeatConfigRequest)
        try:
            reply = await nc.request(
                subject,
                codec.encode(HeartbeatConfigRequest()),
                timeout=timeout_s,
                headers={H_SCHEMA: schema_id(HeartbeatConfigRequest)},
            )
            decoded = codec.decode_reply(reply.data, HeartbeatConfig)
        except (nats.errors.Error, TimeoutError, msgspec.DecodeError):
            return False
        if decoded.ok and decoded.data is not None:
            self.seconds, self.announced = decoded.data.interval_s, True
        return self.announced

    async def keep_fresh(self, nc: Client, every_s: float = 300.0) -> None:
        """Ask at start, again every 10 s until answered, then every `every_s` (the setting may change)."""
        while True:
            answered = await self.refresh(nc)
            await asyncio.sleep(every_s if answered else 10.0)


class HeartbeatSender:
    """One node's heartbeats: `seq` +1 each, facts read from the driver each time."""

    def __init__(
        self,
        nc: Client,
        driver: NodeDriver,
        cluster_id: str,
        node_id: str,
        interval: Interval,
        log: BoundLogger,
        metrics: AgentMetrics | None = None,
    ) -> None:
        self.nc, self.driver, self.interval, self.log = nc, driver, interval, log
        self.metrics = metrics  # the process's figures (sent, failed), shared by every sender it builds
        self.cluster_id, self.node_id = cluster_id, node_id
        self.subject = subjects.heartbeat(cluster_id, node_id)
        self.seq = 0
        self.failures = 0

    async def build(self) -> Heartbeat:
        facts = await self.driver.facts()
        return Heartbeat(
            cluster_id=self.cluster_id,
            node_id=self.node_id,
            node_name=facts.node_name,
            seq=self.seq,
            sent_at=datetime.now(UTC),
            role=facts.role,
            kubelet_version=facts.kubelet_version,
            kube_proxy_version=facts.kube_proxy_version,
            conditions=facts.conditions,
            api_server=await self.driver.api_server(),
            capacity=facts.capacity,
            allocatable=facts.allocatable,
            agent_version=__version__,
        )

    async def send_one(self) -> None:
        try:
            heartbeat = await self.build()
        except (DriverUnavailable, StepFailed) as exc:
            self.count_failure()
            self.log.warning("no heartbeat: cannot read the node (%s)", exc)
            return
        try:
            await self.nc.publish(self.subject, _encoder.encode(heartbeat), headers=_HEADERS)
            self.seq += 1
            if self.metrics is not None:
                self.metrics.heartbeats.inc()
        except nats.errors.Error as exc:
            self.count_failure()
            self.log.warning("heartbeat not sent: %s", exc)

    def count_failure(self) -> None:
        self.failures += 1
        if self.metrics is not None:
            self.metrics.heartbeat_failures.inc()

    async def run(self) -> None:
        # Spread the first beat over one interval so a packed fleet does not send in lock step.
        await asyncio.sleep(random.uniform(0, self.interval.seconds))
        while True:
            await self.send_one()
            await asyncio.sleep(self.interval.seconds)


class ClusterBeats:
    """Several nodes' heartbeats of one cluster, one HeartbeatBatch a round, from one speaker for them.

    Each node's facts and `seq` are its own `HeartbeatSender`'s (read from its driver), so the service sees
    what it would see from the nodes one by one; a node whose driver cannot be read is left out of the round.
    """

    def __init__(
        self,
        cluster_id: str,
        senders: Callable[[], Sequence[HeartbeatSender]],
        interval: Interval,
        log: BoundLogger,
        metrics: AgentMetrics | None = None,
        per_batch: int = PER_BATCH,
    ) -> None:
        self.cluster_id, self.senders, self.interval, self.log = cluster_id, senders, interval, log
        self.metrics, self.per_batch = metrics, per_batch
        self.subject = subjects.heartbeat_batch(cluster_id)
        self.rounds = 0

    async def send_once(self, nc: Client) -> int:
        """One round: every node's heartbeat, `per_batch` to a message; returns how many were sent."""
        built: list[tuple[HeartbeatSender, Heartbeat]] = []
        for sender in self.senders():
            try:
                built.append((sender, await sender.build()))
            except (DriverUnavailable, StepFailed) as exc:
                sender.count_failure()
                self.log.warning("no heartbeat for %s: cannot read the node (%s)", sender.node_id, exc)
        sent = 0
        for start in range(0, len(built), self.per_batch):
            chunk = built[start : start + self.per_batch]
            batch = HeartbeatBatch(cluster_id=self.cluster_id, beats=[beat for _, beat in chunk])
            try:
                await nc.publish(self.subject, _encoder.encode(batch), headers=_BATCH_HEADERS)
            except nats.errors.Error as exc:
                for sender, _ in chunk:
                    sender.count_failure()
                self.log.warning("heartbeat batch not sent: %s", exc)
                continue
            for sender, _ in chunk:
                sender.seq += 1
            sent += len(chunk)
        if self.metrics is not None and sent:
            self.metrics.heartbeats.inc(sent)
        self.rounds += 1
        return sent

    async def run(self, connection: Callable[[], Client | None]) -> None:
        """Send a round every interval over the connection the cluster speaks on (its own, or the shared one)."""
        await asyncio.sleep(random.uniform(0, self.interval.seconds))  # clusters out of lock step
        while True:
            nc = connection()
            if nc is not None:
                await self.send_once(nc)
            await asyncio.sleep(self.interval.seconds)


async def send_batches(
    cluster: Awaitable[str],
    senders: Callable[[], Sequence[HeartbeatSender]],
    interval: Interval,
    log: BoundLogger,
    metrics: AgentMetrics | None,
    connection: Callable[[], Client | None],
) -> None:
    """Once the cluster is known (approved), send its nodes' heartbeats as batches until cancelled."""
    cluster_id = await cluster
    await ClusterBeats(cluster_id, senders, interval, log.bind(cluster=cluster_id), metrics).run(connection)
