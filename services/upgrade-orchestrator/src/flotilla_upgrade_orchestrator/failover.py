"""Two processes on one state file (a replacement started while the old pod lives): who may act, on what.

The lease (lease.py) says which process may write a rollout; three rules here make a takeover work:
- Fresh state: every work first asks SQLite whether another connection committed since this process last
  looked (`PRAGMA data_version`); if so the engine's cache is reloaded before the work runs, so a process
  never decides on, nor writes back, rows another process changed (the report it applied, a user's pause).
- Fence: the epoch stored on the rollout row is the newest writer's. A process whose lease epoch is below it
  (two live processes with one fixed instance id, until the next renewal tells the older one it lost) does
  not act on the rollout.
- Takeover: the first work after the lease is taken at a newer epoch re-sends every step in flight under the
  same command id (same attempt: the agent's journal answers a step it ran with its recorded outcome, resumes
  one it was running, runs one it never got), at the new epoch, with a new deadline. What the old process
  pulled from the report consumer and never acked is not waited for (it comes back only after ack_wait).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from flotilla_runtime.logs import get_logger
from flotilla_runtime.store import SyncTx
from flotilla_upgrade_orchestrator import applier
from flotilla_upgrade_orchestrator import store as repo
from flotilla_upgrade_orchestrator.decide import facts
from flotilla_upgrade_orchestrator.engine import Engine

T = TypeVar("T")
log = get_logger("flotilla.upgrade-orchestrator.failover")


@dataclass
class Fence:
    """`Engine.epoch_of` that also refuses an epoch below the one a newer writer stored on the rollout."""

    engine: Engine
    held: Callable[[str], int | None]
    _told: set[tuple[str, int]] = field(default_factory=set)

    def __call__(self, rollout_id: str) -> int | None:
        epoch = self.held(rollout_id)
        rollout = self.engine.rollouts.get(rollout_id)
        if epoch is None or rollout is None or epoch >= rollout.rec.epoch:
            return epoch
        if (rollout_id, rollout.rec.epoch) not in self._told:
            self._told.add((rollout_id, rollout.rec.epoch))
            log.bind(rollout=rollout_id).warning(
                "rollout written at epoch %d by another process while our lease says %d: not acting on it until "
                "the lease is ours again",
                rollout.rec.epoch,
                epoch,
            )
        return None


@dataclass
class SharedFile:
    """Notices commits other processes made to the state file (SQLite's data_version, per connection)."""

    seen: int | None = None
    reloads: int = 0

    def changed(self, tx: SyncTx) -> bool:
        version = repo.data_version(tx)
        changed = self.seen is not None and version != self.seen
        self.seen = version
        self.reloads += changed
        return changed


def guarded(
    engine: Engine, shared: SharedFile, fn: Callable[[SyncTx], T], now: Callable[[], datetime]
) -> Callable[[SyncTx], T]:
    """`fn` as a `Store.run` work on fresh state, after any takeover the lease calls for."""

    def with_takeovers(tx: SyncTx) -> T:
        take_over(engine, tx, now())
        return fn(tx)

    inner = engine.transact(with_takeovers)

    def work(tx: SyncTx) -> T:
        if shared.changed(tx):
            engine.stale = True
        return inner(tx)

    return work


def take_over(engine: Engine, tx: SyncTx, now: datetime) -> None:
    """Rollouts whose lease we hold at a newer epoch than their row: `decide` re-sends their steps in flight."""
    for rollout in engine.rollouts.values():
        epoch = engine.epoch_of(rollout.rollout_id)
        if epoch is not None and epoch > rollout.rec.epoch:
            applier.run(engine, tx, rollout, facts.TakeOver(epoch), now)
