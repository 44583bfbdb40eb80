"""The service loop every `TICK_S`: flush heartbeats, tick the model, record transitions in the outbox, checkpoint.

Ticks never wait for the database: a writer task records what the ticks produced, up to `write_batch` events a
transaction, one transaction a tick.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from flotilla_contracts.catalogue import subject_for
from flotilla_contracts.envelope import Message
from flotilla_contracts.v1.heartbeat import ClusterHealthChanged, HeartbeatNoiseReported, NodeHealthChanged
from flotilla_heartbeat import store as tables
from flotilla_heartbeat.clock import Clock
from flotilla_heartbeat.deafness import Deafness
from flotilla_heartbeat.domain import HealthModel
from flotilla_heartbeat.health_state import Cluster
from flotilla_heartbeat.ingest import Ingest
from flotilla_heartbeat.noise import NoiseWindow
from flotilla_runtime import telemetry
from flotilla_runtime.logs import BoundLogger
from flotilla_runtime.store import Store, SyncTx


@dataclass
class TickLoop:
    """Turns what ingest buffered into health events and checkpoints; `run` until the service stops."""

    store: Store
    model: HealthModel
    ingest: Ingest
    noise: NoiseWindow
    log: BoundLogger
    clock: Clock
    tick_s: float = 0.1
    checkpoint_s: float = 5.0
    seen_refresh_s: float = 60.0
    backlog_limit: int = 20_000
    write_batch: int = 2_000  # events per outbox transaction, one a tick: 20,000/s at TICK_S 0.1
    deafness: Deafness = field(default_factory=Deafness)
    transitions: int = 0
    pending: list[tuple[str, Message]] = field(default_factory=list)
    _changed_clusters: dict[str, Cluster] = field(default_factory=dict)
    _rotation: int = 0
    _rate: float = 0.0
    _received: int = 0
    _judged: float = 0.0
    _drops_quiet_until: float = 0.0

    async def run(self, running: Callable[[], bool]) -> None:
        """Until `running()` turns false. Ticks never wait for the database: a writer task does that.

        Both stop between transactions (a cancel inside one would leave it open).
        """
        writer = asyncio.create_task(self._write(running))
        last_tick = self.clock()[0]
        try:
            while running():
                await asyncio.sleep(self.tick_s)
                self.step(last_tick)
                last_tick = self.clock()[0]
        finally:
            await writer
        while self.pending and await self.publish():
            pass

    async def _write(self, running: Callable[[], bool]) -> None:
        last_checkpoint = self.clock()[0]
        while running():
            await asyncio.sleep(self.tick_s)
            await self.publish()
            if self.clock()[0] - last_checkpoint >= self.checkpoint_s:
                last_checkpoint = self.clock()[0]
                await self.save()

    def step(self, last_tick: float) -> None:
        self.ingest.flush()
        now, wall = self.clock()
        stalled = now - last_tick - self.tick_s  # we were not running: what arrived meanwhile may not be read yet
        # Heartbeats still waiting in the client were sent before now: judge liveness as of the time we have
        # read up to (the backlog over the recent rate), so being behind delays detection instead of faking it.
        received = self.ingest.received
        elapsed = max(now - last_tick, 1e-3)
        self._rate = 0.8 * self._rate + 0.2 * ((received - self._received) / elapsed)
        self._received = received
        lag = min(self.ingest.backlog / self._rate, 5.0) if self._rate > 1.0 else 0.0
        lag = max(lag, stalled if stalled > 0.25 else 0.0)
        if self.ingest.backlog > self.backlog_limit and lag >= 5.0:
            self.model.hold(now + 1.0)  # far behind: blame nobody until we catch up
        outages, dropped = self.deafness.seen, self.deafness.seen_dropped
        deaf_until = self.deafness.hold_until(now, self.model.policy.startup_grace_s)
        if deaf_until is not None:
            self.model.hold(deaf_until)  # we could not hear: nobody was silent to us
            if self.deafness.began(outages):
                self.log.warning(
                    "heartbeat's own bus link went down: no node is judged Unreachable until %.0fs after it is back",
                    self.model.policy.startup_grace_s,
                )
            if self.deafness.seen_dropped > dropped and now >= self._drops_quiet_until:
                self._drops_quiet_until = now + self.model.policy.startup_grace_s  # one line a grace at most
                self.log.warning(
                    "heartbeats were dropped before this replica read them (%d so far: its subscription's pending "
                    "limits were full); no node is judged Unreachable until %.0fs after the last drop",
                    self.deafness.seen_dropped,
                    self.model.policy.startup_grace_s,
                )
        judged = max(now - lag, self._judged)
        self._judged = judged
        for change in self.model.tick(now, wall, now - judged):
            if isinstance(change, NodeHealthChanged):
                self.pending.append(
                    (subject_for(NodeHealthChanged, cluster_id=change.cluster_id, node_id=change.node_id), change)
                )
            else:
                self.pending.append((subject_for(ClusterHealthChanged, cluster_id=change.cluster_id), change))
                cluster = self.model.clusters.get(change.cluster_id)
                if cluster is not None:
                    self._changed_clusters[change.cluster_id] = cluster
        self.pending.extend(self.ingest.take_refusals())
        if self.noise.due(wall):
            for report in self.noise.close(wall):
                self.pending.append((subject_for(HeartbeatNoiseReported, cluster_id=report.cluster_id), report))

    async def publish(self) -> bool:
        """Transitions and noise reports, oldest first, into the outbox (the relay publishes them); False when
        the store refused them (they are kept for the next round).

        At most `write_batch` per round (one database-thread hop for them all, `Store.run`): a fleet seen for the
        first time at once (100,000 first-seen nodes) reaches the outbox at about the relay's pace (tens of
        thousands a second, tests/bench/bench_outbox.py) instead of one hop per event, and never holds the
        database thread long enough to starve the heartbeat subscription of the event loop.
        """
        if not self.pending:
            return True
        batch, self.pending = self.pending[: self.write_batch], self.pending[self.write_batch :]

        def write(tx: SyncTx) -> None:
            for subject, event in batch:
                tx.emit(subject, event)

        # Heartbeats are not traced (DESIGN: speed); the health changes they add up to start a trace of their
        # own, so the reactions of the orchestrator and the scheduler to them are one trace with them.
        span = telemetry.tracer("flotilla").start_as_current_span(
            "heartbeat health changes", attributes={"flotilla.events": len(batch)}
        )
        try:
            with span:
                await self.store.run(write)
        except Exception:
            self.pending = batch + self.pending
            self.log.exception("cannot record %d health events; retrying", len(batch))
            return False
        self.transitions += len(batch)
        return True

    async def save(self) -> None:
        """Checkpoint changed nodes and clusters, plus a rotating slice of last-seen times."""
        keys, self.model.checkpoint = self.model.checkpoint, set()
        clusters, self._changed_clusters = list(self._changed_clusters.values()), {}
        ids = sorted(self.model.clusters)
        if ids:
            share = max(1, int(len(ids) * self.checkpoint_s / self.seen_refresh_s))
            start = self._rotation % len(ids)
            for cluster_id in ids[start : start + share]:
                keys.update((cluster_id, node_id) for node_id in self.model.clusters[cluster_id].nodes)
            self._rotation = start + share
        try:
            await tables.checkpoint(self.store, self.model, keys, clusters)
        except Exception:
            self.model.checkpoint |= keys
            self.log.exception("checkpoint failed; retrying with the next one")
