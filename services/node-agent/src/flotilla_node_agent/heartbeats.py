"""Heartbeats at the interval the heartbeat service announces, on core NATS (volatile, high rate)."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime

import msgspec
import nats.errors
from nats.aio.client import Client

from flotilla_contracts import catalogue, subjects
from flotilla_contracts.envelope import H_SCHEMA, schema_id
from flotilla_contracts.v1.heartbeat import Heartbeat, HeartbeatConfig, HeartbeatConfigRequest
from flotilla_node_agent import __version__
from flotilla_node_agent.agent_metrics import AgentMetrics
from flotilla_node_agent.drivers.base import DriverUnavailable, NodeDriver, StepFailed
from flotilla_runtime import codec
from flotilla_runtime.logs import BoundLogger

_encoder = msgspec.json.Encoder()
_HEADERS = {H_SCHEMA: schema_id(Heartbeat)}


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
            self._failed()
            self.log.warning("no heartbeat: cannot read the node (%s)", exc)
            return
        try:
            await self.nc.publish(self.subject, _encoder.encode(heartbeat), headers=_HEADERS)
            self.seq += 1
            if self.metrics is not None:
                self.metrics.heartbeats.inc()
        except nats.errors.Error as exc:
            self._failed()
            self.log.warning("heartbeat not sent: %s", exc)

    def _failed(self) -> None:
        self.failures += 1
        if self.metrics is not None:
            self.metrics.heartbeat_failures.inc()

    async def run(self) -> None:
        # Spread the first beat over one interval so a packed fleet does not send in lock step.
        await asyncio.sleep(random.uniform(0, self.interval.seconds))
        while True:
            await self.send_one()
            await asyncio.sleep(self.interval.seconds)
