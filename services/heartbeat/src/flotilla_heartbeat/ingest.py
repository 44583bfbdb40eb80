"""The hot path: a raw nats-py subscription on the heartbeat subjects, decoded with msgspec and applied in batches.

No FastStream handler and no span per message (DESIGN: Speed). Bad input is dropped and counted by reason;
it never raises and never delays the good heartbeats behind it. The sender is the subject's cluster and node
(the server's grant restricts them): a tracked cluster's heartbeat passes the quota (flotilla_heartbeat.quota)
before it is even decoded, and a body naming another cluster or node is refused. Refusals are counted and
reported through the RefusalLedger (one event per cluster, reason and window); nothing refused creates state.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from flotilla_contracts.envelope import H_SCHEMA, SchemaIdError, parse_schema_id, schema_id
from flotilla_contracts.errors import ErrorCode
from flotilla_contracts.ids import TOKEN_PATTERN
from flotilla_contracts.subjects import Service
from flotilla_contracts.v1.heartbeat import Heartbeat, NoiseReason
from flotilla_contracts.v1.security import MemberRefused, RefusalReason
from flotilla_heartbeat.domain import HealthModel
from flotilla_heartbeat.noise import NoiseWindow
from flotilla_heartbeat.quota import Quota
from flotilla_runtime.trust import RefusalLedger

HEARTBEAT_SCHEMA = schema_id(Heartbeat)
_decoder = msgspec.json.Decoder(Heartbeat)

# Why a heartbeat was dropped: the stable error codes, plus the membership reasons of noise.
DropReasons = Counter[str]


class Ingest:
    """Buffers raw messages and applies them to the model in batches; `flush` is called by the service loop."""

    def __init__(
        self,
        model: HealthModel,
        noise: NoiseWindow,
        membership_reason: Callable[[str], NoiseReason],
        *,
        quota: Quota | None = None,
        ledger: RefusalLedger | None = None,
        max_bytes: int,
        batch: int = 1024,
        now: Callable[[], tuple[float, float]],
    ) -> None:
        self.model = model
        self.noise = noise
        self.membership_reason = membership_reason
        self.quota = quota or Quota()
        self.ledger = ledger or RefusalLedger(Service.HEARTBEAT.value)
        self.refusals: list[tuple[str, MemberRefused]] = []  # security events for the outbox (the tick loop takes them)
        self.max_bytes = max_bytes
        self.batch = batch
        self.now = now
        self.received = 0
        self.applied = 0
        self.dropped: DropReasons = Counter()
        self._buffer: list[Msg] = []
        self._subs: list[Subscription] = []

    async def subscribe(self, nc: Client, filters: list[str]) -> None:
        for subject in filters:
            self._subs.append(
                await nc.subscribe(
                    subject, cb=self._on_message, pending_msgs_limit=2_000_000, pending_bytes_limit=2 * 1024**3
                )
            )

    async def unsubscribe(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        self._subs.clear()

    @property
    def backlog(self) -> int:
        """Messages received by the client but not yet handed to us (a sign we are behind)."""
        return sum(sub.pending_msgs for sub in self._subs) + len(self._buffer)

    async def _on_message(self, msg: Msg) -> None:
        buffer = self._buffer
        buffer.append(msg)
        if len(buffer) >= self.batch:
            self.flush()

    def flush(self) -> None:
        """Apply every buffered heartbeat as received now."""
        buffer, self._buffer = self._buffer, []
        if not buffer:
            return
        now, wall = self.now()
        self.model.begin(now, wall)
        observe = self.model.observe
        clusters = self.model.clusters
        admit = self.quota.admit
        dropped = self.dropped
        decode = _decoder.decode
        max_bytes = self.max_bytes
        applied = 0
        for msg in buffer:
            subject = msg.subject
            _, cluster_id, node_id = subject.rsplit(".", 2)
            cluster = clusters.get(cluster_id)
            if cluster is not None:
                refused = admit(cluster, node_id, now)
                if refused is not None:
                    dropped[refused] += 1
                    self.refuse(cluster_id, refused, node_id, subject)
                    continue
            data = msg.data
            if len(data) > max_bytes:
                self.dropped[ErrorCode.TOO_LARGE] += 1
                continue
            headers = msg.headers
            if headers:
                schema = headers.get(H_SCHEMA)
                if schema and schema != HEARTBEAT_SCHEMA:
                    self.dropped[_schema_problem(schema)] += 1
                    continue
            try:
                hb = decode(data)
            except msgspec.ValidationError as exc:
                self.dropped[ErrorCode.INVALID_ID if TOKEN_PATTERN in str(exc) else ErrorCode.INVALID_FIELD] += 1
                continue
            except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
                self.dropped[ErrorCode.MALFORMED] += 1
                continue
            if hb.cluster_id != cluster_id or hb.node_id != node_id:
                dropped[ErrorCode.SUBJECT_MISMATCH] += 1
                detail = f"the body speaks for {hb.cluster_id}/{hb.node_id}"
                self.refuse(cluster_id, RefusalReason.SUBJECT_BODY_MISMATCH, node_id, subject, detail)
                continue
            if observe(hb):
                applied += 1
            else:
                reason = self.membership_reason(cluster_id)
                self.dropped[reason] += 1
                self.noise.count(cluster_id, node_id, reason)
        self.received += len(buffer)
        self.applied += applied

    def refuse(self, cluster_id: str, reason: RefusalReason, node_id: str, subject: str, detail: str = "") -> None:
        """Count a refusal; the first of its cluster and reason in a window becomes an event."""
        event = self.ledger.refuse(cluster_id, reason, node=node_id, subject=subject, detail=detail)
        if event is not None:
            self.refusals.append((self.ledger.subject_for(event), event))

    def take_refusals(self) -> list[tuple[str, MemberRefused]]:
        found, self.refusals = self.refusals, []
        return found

    def stats(self) -> dict[str, Any]:
        return {"received": self.received, "applied": self.applied, "dropped": dict(self.dropped)}


def _schema_problem(schema: str) -> str:
    try:
        name, _version = parse_schema_id(schema)
    except SchemaIdError:
        return ErrorCode.WRONG_SCHEMA
    return ErrorCode.UNSUPPORTED_VERSION if name == Heartbeat.SCHEMA else ErrorCode.WRONG_SCHEMA
