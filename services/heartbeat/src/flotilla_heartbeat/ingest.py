"""The hot path: a raw nats-py subscription on the heartbeat subjects, decoded with msgspec and applied in batches.

No FastStream handler and no span per message (DESIGN: Speed). Bad input is dropped and counted by reason;
it never raises and never delays the good heartbeats behind it. The sender is the subject's cluster and node
(the server's grant restricts them): a tracked cluster's heartbeat passes the quota (flotilla_heartbeat.quota)
before it is even decoded, and a body naming another cluster or node is refused. Refusals are counted and
reported through the RefusalLedger (one event per cluster, reason and window); nothing refused creates state.

A HeartbeatBatch (`fleet.v1.hb.<cluster>`, several nodes' heartbeats from one speaker for its cluster) is
taken apart here: its entries are decoded one by one (a bad entry is dropped alone) and each passes the same
checks as a single heartbeat, in the same order (its cluster is the subject's, its node the quota's).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable
from typing import Annotated, Any

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from flotilla_contracts.envelope import H_SCHEMA, SchemaIdError, parse_schema_id, schema_id
from flotilla_contracts.errors import ErrorCode
from flotilla_contracts.ids import TOKEN_PATTERN
from flotilla_contracts.subjects import Service
from flotilla_contracts.v1.heartbeat import MAX_BATCH, Heartbeat, HeartbeatBatch, NoiseReason
from flotilla_contracts.v1.security import MemberRefused, RefusalReason
from flotilla_heartbeat.domain import HealthModel
from flotilla_heartbeat.fastpath import NO_KEY, FactsCache, Pulse, body_key, decode_pulse
from flotilla_heartbeat.health_state import Cluster, Node
from flotilla_heartbeat.noise import NoiseWindow
from flotilla_heartbeat.quota import Quota
from flotilla_runtime.trust import RefusalLedger

HEARTBEAT_SCHEMA = schema_id(Heartbeat)
BATCH_SCHEMA = schema_id(HeartbeatBatch)
_decoder = msgspec.json.Decoder(Heartbeat)


class _RawBatch(msgspec.Struct):
    """A HeartbeatBatch with its entries left encoded, so that each is decoded (and refused) on its own."""

    cluster_id: str
    beats: Annotated[list[msgspec.Raw], msgspec.Meta(max_length=MAX_BATCH)] = []


_batch_decoder = msgspec.json.Decoder(_RawBatch)

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
        self.cheap = 0  # applied the cheap way (flotilla_heartbeat.fastpath)
        self.known = FactsCache()
        self.dropped: DropReasons = Counter()
        self._buffer: list[Msg] = []
        self._batches: list[Msg] = []
        self._subs: list[Subscription] = []

    async def subscribe(self, nc: Client, filters: list[str]) -> None:
        """Subscribe the filters: single heartbeats end in `<cluster>.<node>`, batches in `<cluster>` alone."""
        for subject in filters:
            batches = subject.endswith(".*") and not subject.endswith("*.*")
            self._subs.append(
                await nc.subscribe(
                    subject,
                    cb=self._on_batch if batches else self._on_message,
                    pending_msgs_limit=2_000_000,
                    pending_bytes_limit=2 * 1024**3,
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
        return sum(sub.pending_msgs for sub in self._subs) + len(self._buffer) + len(self._batches)

    async def _on_message(self, msg: Msg) -> None:
        buffer = self._buffer
        buffer.append(msg)
        if len(buffer) >= self.batch:
            self.flush()

    async def _on_batch(self, msg: Msg) -> None:
        self._batches.append(msg)
        if len(self._batches) * 64 >= self.batch:  # a batch holds tens to hundreds of heartbeats
            self.flush()

    def flush(self) -> None:
        """Apply every buffered heartbeat and batch as received now."""
        buffer, self._buffer = self._buffer, []
        batches, self._batches = self._batches, []
        if not buffer and not batches:
            return
        now, wall = self.now()
        self.model.begin(now, wall)
        for msg in batches:
            self._apply_batch(msg, now)
        if buffer:
            self._apply_singles(buffer, now)

    def _apply_singles(self, buffer: list[Msg], now: float) -> None:
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
            key = body_key(data)
            if cluster is not None and self._pulse(cluster, cluster.nodes.get(node_id), data, key, node_id):
                applied += 1
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
                tracked = clusters.get(cluster_id)  # the model tracks what it accepts; a look-up, not an index
                if tracked is not None and node_id in tracked.nodes:
                    self.known.remember(key, tracked.nodes[node_id].facts)
            else:
                reason = self.membership_reason(cluster_id)
                self.dropped[reason] += 1
                self.noise.count(cluster_id, node_id, reason)
        self.received += len(buffer)
        self.applied += applied

    def _apply_batch(self, msg: Msg, now: float) -> None:
        """One HeartbeatBatch: the message's checks once, then every entry's as if it came alone."""
        subject = msg.subject
        cluster_id = subject.rsplit(".", 1)[1]
        dropped = self.dropped
        data = msg.data
        self.received += 1
        if len(data) > self.max_bytes:
            dropped[ErrorCode.TOO_LARGE] += 1
            return
        headers = msg.headers
        schema = headers.get(H_SCHEMA) if headers else None
        if schema and schema != BATCH_SCHEMA:
            dropped[_schema_problem(schema, HeartbeatBatch.SCHEMA)] += 1
            return
        try:
            batch = _batch_decoder.decode(data)
        except msgspec.ValidationError:
            dropped[ErrorCode.INVALID_FIELD] += 1
            return
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            dropped[ErrorCode.MALFORMED] += 1
            return
        if batch.cluster_id != cluster_id:
            dropped[ErrorCode.SUBJECT_MISMATCH] += 1
            detail = f"the batch speaks for cluster {batch.cluster_id}"
            self.refuse(cluster_id, RefusalReason.SUBJECT_BODY_MISMATCH, "", subject, detail)
            return
        self.received += len(batch.beats) - 1
        cluster = self.model.clusters.get(cluster_id)
        admit, observe, decode = self.quota.admit, self.model.observe, _decoder.decode
        applied = 0
        for raw in batch.beats:
            entry = bytes(raw)
            key = body_key(entry)
            admitted = False
            if cluster is not None:  # a tracked node: the rate check first, then (usually) the cheap way
                try:
                    pulse: Pulse | None = decode_pulse(entry)
                except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError, RecursionError):
                    pulse = None  # the full decode says what is wrong
                node = cluster.nodes.get(pulse.node_id) if pulse is not None else None
                if pulse is not None and node is not None:
                    refused = admit(cluster, pulse.node_id, now)
                    if refused is not None:
                        dropped[refused] += 1
                        self.refuse(cluster_id, refused, pulse.node_id, subject)
                        continue
                    admitted = True
                    if self._pulse(cluster, node, entry, key, pulse.node_id, pulse):
                        applied += 1
                        continue
            try:
                hb = decode(entry)
            except msgspec.ValidationError as exc:
                dropped[ErrorCode.INVALID_ID if TOKEN_PATTERN in str(exc) else ErrorCode.INVALID_FIELD] += 1
                continue
            except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
                dropped[ErrorCode.MALFORMED] += 1
                continue
            node_id = hb.node_id
            if hb.cluster_id != cluster_id:
                dropped[ErrorCode.SUBJECT_MISMATCH] += 1
                detail = f"an entry speaks for {hb.cluster_id}/{node_id}"
                self.refuse(cluster_id, RefusalReason.SUBJECT_BODY_MISMATCH, node_id, subject, detail)
                continue
            if cluster is not None and not admitted:  # a tracked node's token was taken above
                refused = admit(cluster, node_id, now)
                if refused is not None:
                    dropped[refused] += 1
                    self.refuse(cluster_id, refused, node_id, subject)
                    continue
            if observe(hb):
                applied += 1
                if cluster is not None:
                    self.known.remember(key, cluster.nodes[node_id].facts)
            else:
                reason = self.membership_reason(cluster_id)
                dropped[reason] += 1
                self.noise.count(cluster_id, node_id, reason)
        self.applied += applied

    def _pulse(
        self, cluster: Cluster, node: Node | None, data: bytes, key: int, node_id: str, pulse: Pulse | None = None
    ) -> bool:
        """Apply a heartbeat the cheap way (flotilla_heartbeat.fastpath) when its body can only repeat the node's
        facts; False: decode it in full (which also says what is wrong with it)."""
        if node is None or key == NO_KEY or node.facts is None or self.known.get(key) is not node.facts:
            return False
        if pulse is None:
            try:
                pulse = decode_pulse(data)
            except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError, RecursionError):
                return False
        if pulse.cluster_id != cluster.cluster_id or pulse.node_id != node_id:
            return False
        if pulse.sent_at is None:
            return False
        self.model.pulse(cluster, node, pulse.seq, pulse.sent_at.timestamp())
        self.cheap += 1
        return True

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


def _schema_problem(schema: str, expected: str = Heartbeat.SCHEMA) -> str:
    try:
        name, _version = parse_schema_id(schema)
    except SchemaIdError:
        return ErrorCode.WRONG_SCHEMA
    return ErrorCode.UNSUPPORTED_VERSION if name == expected else ErrorCode.WRONG_SCHEMA
