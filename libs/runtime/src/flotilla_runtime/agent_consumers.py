"""The nodes' durable consumers on FLEET_AGENT, created by the hub when it has work for them, retired when idle.

A node's commands wait for it in the FLEET_AGENT work queue, in its own durable consumer, so a node that was
down gets them when it returns (DESIGN.md, delivery rules). Holding one for every node at all times was what
broke first at 10,000 nodes (docs/scale.md): 50 KiB of server memory each, and creation slowing as they grow.
So only nodes with work have one:

- The sender creates it before the first command is published: the outbox relay calls `prepare` with each
  batch of rows it is about to publish, and `ensure` creates (or confirms) the consumer of every node the batch
  commands. A consumer is ensured again once its confirmation is older than `confirm_s`; each ensure stamps
  the consumer's metadata with the time (`flotilla.ensured_at`).
- `retire_idle` deletes the node consumers that hold nothing (no message pending, none unacknowledged, no
  pull outstanding) and were neither ensured nor read for `idle_s`. Since every sender confirms within
  `confirm_s` (far shorter than `idle_s`) before it publishes, a consumer about to receive a command is never
  taken as idle, whichever replica sends it.
- The agent side (flotilla_runtime.agent_inbox) only binds: no consumer means nothing was sent.

The cluster agents' consumers (`_cluster`) are created by the cluster agents themselves and never retired here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import datetime

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy

from flotilla_contracts import subjects
from flotilla_contracts.ids import CLUSTER_AGENT_NODE
from flotilla_contracts.streams import FLEET_AGENT, agent_consumer, agent_consumer_ids
from flotilla_runtime.errors import TemporaryError
from flotilla_runtime.store import Row

log = logging.getLogger(__name__)
ENSURED_AT = "flotilla.ensured_at"
Node = tuple[str, str]  # (cluster id, node id)


def node_consumer_config(cluster_id: str, node_id: str, *, ack_wait_s: float, ensured_at: float) -> ConsumerConfig:
    """One node's consumer: its own subjects, one command in flight (steps run in order), acks explicit."""
    name = agent_consumer(cluster_id, node_id)
    return ConsumerConfig(
        name=name,  # the filter goes in the API subject, which is what an agent's grant lets it read
        durable_name=name,
        filter_subject=subjects.agent_commands_for(cluster_id, node_id),
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait_s,
        max_ack_pending=1,
        max_deliver=-1,
        description=f"node-agent commands for {cluster_id}/{node_id}",
        metadata={ENSURED_AT: f"{ensured_at:.0f}"},
    )


def commanded_node(subject: str) -> Node | None:
    """The (cluster, node) an agent command subject is for; None for anything else and for cluster agents."""
    tokens = subject.split(".")
    prefix = subjects.AGENT_PREFIX.split(".")
    if len(tokens) != len(prefix) + 3 or tokens[: len(prefix)] != prefix or tokens[-2] == CLUSTER_AGENT_NODE:
        return None
    return tokens[-3], tokens[-2]


def is_idle(info: ConsumerInfo, now: float, idle_s: float) -> bool:
    """Nothing pending, unacknowledged or being pulled, and neither ensured nor read for `idle_s` (pure)."""
    if info.num_pending or info.num_ack_pending or info.num_waiting:
        return False
    metadata = (info.config.metadata if info.config else None) or {}
    try:
        ensured_at = float(metadata.get(ENSURED_AT, "0"))
    except ValueError:
        ensured_at = 0.0
    last = max(ensured_at, _timestamp(info.created), _timestamp(info.delivered.last_active if info.delivered else None))
    return now - last >= idle_s


def _timestamp(value: datetime | None) -> float:
    return value.timestamp() if value is not None else 0.0


class AgentConsumers:
    """Creates nodes' consumers before their commands go out, and retires the idle ones (see the module)."""

    def __init__(
        self,
        js: Callable[[], JetStreamContext],
        *,
        ack_wait_s: float = 30.0,
        confirm_s: float = 60.0,
        idle_s: float = 900.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if confirm_s * 3 > idle_s:
            raise ValueError(f"idle_s ({idle_s}) must be at least three times confirm_s ({confirm_s})")
        self._js, self.ack_wait_s, self.confirm_s, self.idle_s, self.clock = js, ack_wait_s, confirm_s, idle_s, clock
        self._confirmed: dict[Node, float] = {}
        self._lock = asyncio.Lock()  # a retirement never interleaves with this process's ensures
        self.created = 0  # ensures sent (creations and confirmations)
        self.retired = 0

    async def prepare(self, rows: Iterable[Row]) -> None:
        """The outbox relay's hook: every node commanded in these rows has its consumer before they go out."""
        nodes = dict.fromkeys(node for row in rows if (node := commanded_node(row["subject"])) is not None)
        if nodes:
            await self.ensure(nodes)

    async def ensure(self, nodes: Iterable[Node]) -> None:
        """Create or confirm each node's consumer (unless confirmed within `confirm_s`); a refusal is temporary:
        the relay publishes nothing of the batch and tries again with back-off."""
        now = self.clock()
        due = [n for n in nodes if now - self._confirmed.get(n, float("-inf")) >= self.confirm_s]
        if not due:
            return
        async with self._lock:
            js = self._js()
            for cluster_id, node_id in due:
                config = node_consumer_config(cluster_id, node_id, ack_wait_s=self.ack_wait_s, ensured_at=now)
                try:
                    await js.add_consumer(FLEET_AGENT.name, config)
                except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
                    raise TemporaryError(
                        f"cannot create the consumer of node {cluster_id}/{node_id} ({type(exc).__name__}: {exc}); "
                        "its commands wait in the outbox", delay_s=1.0,
                    ) from exc  # fmt: skip
                self._confirmed[(cluster_id, node_id)] = now
                self.created += 1

    async def retire_idle(self) -> int:
        """Delete the idle node consumers (see `is_idle`); how many were deleted."""
        js = self._js()
        retired = 0
        async with self._lock:
            now = self.clock()
            names = []
            async for info in _consumers(js):
                ids = agent_consumer_ids(info.name)
                if ids is not None and ids[1] != CLUSTER_AGENT_NODE and is_idle(info, now, self.idle_s):
                    names.append((info.name, ids))
            for name, ids in names:
                try:
                    await js.delete_consumer(FLEET_AGENT.name, name)
                except nats.js.errors.NotFoundError:
                    pass
                self._confirmed.pop(ids, None)
                retired += 1
        self.retired += retired
        if retired:
            log.info("retired %d idle node consumers on %s", retired, FLEET_AGENT.name)
        return retired

    async def keep_retiring(self, every_s: float) -> None:
        """`retire_idle` every `every_s`, for ever (a background task); a bus hiccup waits for the next round."""
        while True:
            await asyncio.sleep(every_s)  # sleep: a periodic sweep, not a wait for a condition
            try:
                await self.retire_idle()
            except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
                log.warning("could not retire idle node consumers (%s); next round in %.0fs", exc, every_s)


async def _consumers(js: JetStreamContext) -> AsyncIterator[ConsumerInfo]:
    """Every consumer of FLEET_AGENT, a page (256) at a time."""
    offset = 0
    while True:
        page = await js.consumers_info(FLEET_AGENT.name, offset=offset)
        for info in page:
            yield info
        offset += len(page)
        if len(page) < 256:
            return
