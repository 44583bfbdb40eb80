"""One writer per rollout (I6): a lease in a JetStream KV bucket, taken and renewed by compare-and-set.

Key `rollout.<id>` holds {owner, epoch, expires_at, process}. Taking it over (absent, expired, or our own
from a previous process with the same instance id) writes epoch + 1 with the revision we read, so of two
replicas racing only one wins; renewing rewrites the same epoch, and only while the key still holds our
epoch and process (a twin with our instance id that took it over wins: the loser waits for expiry, it does
not take it straight back). The epoch rides on every agent command,
and agents refuse commands older than the newest epoch they obeyed. A holder that cannot renew stops
issuing at 80% of the TTL, before anyone else may take over.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from flotilla_runtime.errors import TemporaryError

log = logging.getLogger(__name__)


class LeaseValue(msgspec.Struct, frozen=True, kw_only=True):
    owner: str
    epoch: int
    expires_at: float
    process: str = ""  # random per process: tells a restart (or a twin) with the same instance id apart


@dataclass
class Held:
    epoch: int
    valid_until: float  # monotonic


@dataclass
class LocalLeases:
    """Every rollout is ours at epoch 1: one process and no bus (handler tests)."""

    def epoch(self, rollout_id: str) -> int | None:
        return 1


@dataclass
class KvLeases:
    """Leases in a KV bucket; `epoch()` answers from memory, `claim()` talks to JetStream."""

    bucket: str
    owner: str
    ttl_s: float = 15.0
    held: dict[str, Held] = field(default_factory=dict)
    process: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    lost: set[str] = field(default_factory=set)  # rollouts a twin took from us: only expiry gives them back
    seen: dict[str, LeaseValue] = field(default_factory=dict)  # the last value read per rollout (for status)
    wall: Callable[[], float] = field(default=time.time)  # expiries shared with other replicas (POSIX seconds)
    monotonic: Callable[[], float] = field(default=time.monotonic)  # how long we may still issue, locally
    _kv: KeyValue | None = None

    async def provision(self, js: JetStreamContext) -> None:
        """Create the bucket if missing (every replica may try; the first wins)."""
        try:
            self._kv = await js.key_value(self.bucket)
        except nats.js.errors.BucketNotFoundError:
            try:
                self._kv = await js.create_key_value(bucket=self.bucket, history=1, description="rollout leases")
            except nats.js.errors.BadRequestError:
                self._kv = await js.key_value(self.bucket)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
            raise TemporaryError(f"JetStream did not answer while opening lease bucket {self.bucket}") from exc

    def epoch(self, rollout_id: str) -> int | None:
        held = self.held.get(rollout_id)
        if held is None or self.monotonic() >= held.valid_until:
            return None
        return held.epoch

    async def claim(self, rollout_id: str, at_least: int = 0) -> int | None:
        """Take or renew the lease; the epoch when we hold it, None when another writer does."""
        if self._kv is None:
            raise RuntimeError("provision() first")
        key = f"rollout.{rollout_id}"
        started = self.monotonic()
        now = self.wall()
        try:
            try:
                entry = await self._kv.get(key)
            except nats.js.errors.KeyNotFoundError:
                entry = None
            if entry is None or entry.value is None:
                epoch = at_least + 1
                await self._kv.create(key, self._value(epoch, now))
            else:
                value = msgspec.json.decode(entry.value, type=LeaseValue)
                self.seen[rollout_id] = value
                mine = value.owner == self.owner and value.process in ("", self.process)
                held = self.held.get(rollout_id)
                if held is not None and mine and value.epoch == held.epoch:
                    epoch = value.epoch
                elif value.expires_at < now or (
                    value.owner == self.owner and held is None and rollout_id not in self.lost
                ):
                    epoch = max(value.epoch, at_least) + 1
                else:
                    if held is not None:
                        self.lost.add(rollout_id)
                        log.warning(
                            "lease rollout.%s lost to %s (process %s) at epoch %d; waiting for it to expire",
                            rollout_id,
                            value.owner,
                            value.process or "?",
                            value.epoch,
                        )
                    self.held.pop(rollout_id, None)
                    return None
                await self._kv.update(key, self._value(epoch, now), last=entry.revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            self.held.pop(rollout_id, None)
            return None  # another replica wrote first
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("lease %s not renewed (%s); it lapses if this goes on", key, exc)
            return self.epoch(rollout_id)
        self.held[rollout_id] = Held(epoch=epoch, valid_until=started + self.ttl_s * 0.8)
        self.lost.discard(rollout_id)
        return epoch

    async def release(self, rollout_id: str) -> None:
        """Give the lease up at once (the key stays, so the epoch keeps counting up)."""
        held = self.held.pop(rollout_id, None)
        if held is None or self._kv is None:
            return
        try:
            entry = await self._kv.get(f"rollout.{rollout_id}")
            await self._kv.update(
                f"rollout.{rollout_id}",
                msgspec.json.encode(
                    LeaseValue(owner=self.owner, epoch=held.epoch, expires_at=0.0, process=self.process)
                ),
                last=entry.revision,
            )
        except (nats.errors.Error, TimeoutError):
            pass

    def _value(self, epoch: int, now: float) -> bytes:
        value = LeaseValue(owner=self.owner, epoch=epoch, expires_at=now + self.ttl_s, process=self.process)
        return msgspec.json.encode(value)
