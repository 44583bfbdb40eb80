"""The scheduler's tables (see migrations/0001_init.sql): rows in, plain values out. Nothing else touches SQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import msgspec

from flotilla_contracts.envelope import Message
from flotilla_contracts.v1.common import Resources, Taint
from flotilla_contracts.v1.heartbeat import ClusterHealth
from flotilla_contracts.v1.scheduler import AppliedState, ClusterApplied, PlacementPolicy, SubscriptionSpec
from flotilla_runtime.disruption import Disruption
from flotilla_runtime.store import Row, Store, SyncTx, Tx
from flotilla_scheduler.placement import Placement
from flotilla_scheduler.reports import Sent


class ClusterRecord(msgspec.Struct, frozen=True, kw_only=True):
    """What the read model knows of one cluster, from registration and heartbeat events."""

    approved: bool = False
    labels: dict[str, str] = {}
    taints: list[Taint] = []
    health: ClusterHealth = ClusterHealth.UNKNOWN
    health_since: datetime | None = None
    lost: bool = False
    allocatable: Resources | None = None


@dataclass
class SubscriptionRow:
    spec: SubscriptionSpec
    generation: int
    created_at: datetime
    updated_at: datetime
    decision: int
    placed_policy: PlacementPolicy | None
    unplaced: int
    message: str


_spec = msgspec.json.Decoder(SubscriptionSpec)
_policy = msgspec.json.Decoder(PlacementPolicy)
_record = msgspec.json.Decoder(ClusterRecord)
_enc = msgspec.json.Encoder()


def _iso(when: datetime) -> str:
    return when.isoformat()


class Writer(Protocol):
    """Where a use case writes rows and queues events: a `Store.run` work's SyncTx, or a `Recorder`."""

    def execute(self, sql: str, params: Any = ()) -> object: ...

    def executemany(self, sql: str, params: Iterable[Any]) -> object: ...

    def emit(self, subject: str, message: Message) -> object: ...


class Recorder:
    """Writes and events kept in order, then replayed into an open async transaction (the read model's)."""

    def __init__(self) -> None:
        self._steps: list[tuple[str, Any, Message | None, bool]] = []

    def execute(self, sql: str, params: Any = ()) -> object:
        self._steps.append((sql, params, None, False))
        return None

    def executemany(self, sql: str, params: Iterable[Any]) -> object:
        self._steps.append((sql, list(params), None, True))
        return None

    def emit(self, subject: str, message: Message) -> object:
        self._steps.append(("", subject, message, False))
        return None

    async def flush(self, tx: Tx) -> None:
        steps, self._steps = self._steps, []
        for sql, params, message, many in steps:
            if message is not None:
                await tx.emit(params, message)
            elif many:
                await tx.executemany(sql, params)
            else:
                await tx.execute(sql, params)


async def epoch(store: Store) -> str:
    """A random id made once per state file: the event consumer is named after it, so a fresh file replays."""
    async with store.transaction() as tx:
        row = await tx.fetchone("SELECT value FROM scheduler_meta WHERE key = 'epoch'")
        if row is not None:
            return str(row[0])
        value = uuid.uuid4().hex[:12]
        await tx.execute("INSERT INTO scheduler_meta (key, value) VALUES ('epoch', ?)", (value,))
        return value


# The memory stamp: written by every transaction that may change the engine's memory, and kept in memory
# too; the two differ exactly when such a transaction did not commit (see engine.py).
_STAMP_SELECT = "SELECT value FROM scheduler_meta WHERE key = 'memory'"


async def memory_stamp(tx: Tx) -> str:
    row = await tx.fetchone(_STAMP_SELECT)
    return str(row[0]) if row is not None else ""


def stamp_in(tx: SyncTx) -> str:
    """The stamp the tables hold, inside a `Store.run` work."""
    row = tx.fetchone(_STAMP_SELECT)
    return str(row[0]) if row is not None else ""


_STAMP_SWAP = "UPDATE scheduler_meta SET value = ? WHERE key = 'memory' AND value = ?"


async def swap_stamp(tx: Tx, expected: str, stamp: str) -> bool:
    """Replace the stamp if it still is `expected`; False (nothing written) when it is not."""
    return await tx.execute(_STAMP_SWAP, (stamp, expected)) == 1


def swap_stamp_in(tx: SyncTx, expected: str, stamp: str) -> bool:
    """`swap_stamp` inside a `Store.run` work."""
    return tx.execute(_STAMP_SWAP, (stamp, expected)) == 1


_STAMP_SET = "INSERT OR REPLACE INTO scheduler_meta (key, value) VALUES ('memory', ?)"


async def set_memory_stamp(tx: Tx, stamp: str) -> None:
    await tx.execute(_STAMP_SET, (stamp,))


def set_stamp_in(tx: SyncTx, stamp: str) -> None:
    tx.execute(_STAMP_SET, (stamp,))


class DisruptionRow(msgspec.Struct, frozen=True, kw_only=True):
    """The fleet disruption rule's verdict (the groups disrupted now) and when a disruption last ended."""

    disrupted: list[Disruption] = []
    resumed_at: datetime | None = None


_disruption = msgspec.json.Decoder(DisruptionRow)


async def load_disruption(tx: Tx) -> DisruptionRow:
    row = await tx.fetchone("SELECT value FROM scheduler_meta WHERE key = 'disruption'")
    return DisruptionRow() if row is None else _disruption.decode(row[0])


async def save_disruption(tx: Tx, row: DisruptionRow) -> None:
    value = _enc.encode(row).decode()
    await tx.execute("INSERT OR REPLACE INTO scheduler_meta (key, value) VALUES ('disruption', ?)", (value,))


def _subscription(row: Row) -> SubscriptionRow:
    return SubscriptionRow(
        spec=_spec.decode(row["spec"]),
        generation=int(row["generation"]),
        created_at=datetime.fromisoformat(row["created_at"]),
        updated_at=datetime.fromisoformat(row["updated_at"]),
        decision=int(row["decision"]),
        placed_policy=_policy.decode(row["placed_policy"]) if row["placed_policy"] else None,
        unplaced=int(row["unplaced"]),
        message=str(row["message"]),
    )


_SUB_COLUMNS = "name, generation, spec, created_at, updated_at, decision, placed_policy, unplaced, message"


async def load_subscriptions(tx: Tx) -> dict[str, SubscriptionRow]:
    rows = await tx.fetchall(f"SELECT {_SUB_COLUMNS} FROM subscriptions")
    return {str(row["name"]): _subscription(row) for row in rows}


async def load_placements(tx: Tx) -> dict[str, dict[str, tuple[Placement, str]]]:
    found: dict[str, dict[str, tuple[Placement, str]]] = {}
    for row in await tx.fetchall("SELECT name, cluster_id, replicas, since, digest FROM placements"):
        placement = Placement(row["cluster_id"], row["replicas"], datetime.fromisoformat(row["since"]))
        found.setdefault(row["name"], {})[row["cluster_id"]] = (placement, str(row["digest"]))
    return found


async def load_clusters(tx: Tx) -> dict[str, ClusterRecord]:
    return {str(row[0]): _record.decode(row[1]) for row in await tx.fetchall("SELECT cluster_id, record FROM clusters")}


def save_subscription(tx: Writer, name: str, sub: SubscriptionRow) -> None:
    tx.execute(
        f"INSERT OR REPLACE INTO subscriptions ({_SUB_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            name,
            sub.generation,
            _enc.encode(sub.spec),
            _iso(sub.created_at),
            _iso(sub.updated_at),
            sub.decision,
            _enc.encode(sub.placed_policy) if sub.placed_policy is not None else None,
            sub.unplaced,
            sub.message,
        ),
    )


def delete_subscription(tx: Writer, name: str) -> None:
    for table in ("subscriptions", "placements", "applied"):
        tx.execute(f"DELETE FROM {table} WHERE name = ?", (name,))


_PUT_PLACEMENT = "INSERT OR REPLACE INTO placements (name, cluster_id, replicas, since, digest) VALUES (?, ?, ?, ?, ?)"
_DROP_PLACEMENT = "DELETE FROM placements WHERE name = ? AND cluster_id = ?"


async def put_cluster(tx: Tx, cluster_id: str, record: ClusterRecord) -> None:
    await tx.execute(
        "INSERT OR REPLACE INTO clusters (cluster_id, record) VALUES (?, ?)", (cluster_id, _enc.encode(record))
    )


# A status is recorded unless a newer generation's is already there (one statement, no read first).
_UPSERT_APPLIED = (
    "INSERT INTO applied (name, cluster_id, generation, state, message, reported_at) VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (name, cluster_id) DO UPDATE SET generation = excluded.generation, state = excluded.state, "
    "message = excluded.message, reported_at = excluded.reported_at WHERE excluded.generation >= applied.generation"
)


async def set_applied(
    tx: Tx, name: str, cluster_id: str, generation: int, state: AppliedState, message: str, at: datetime | None
) -> bool:
    """Record a status unless a newer generation's is already there; True when recorded."""
    params = (name, cluster_id, generation, state.value, message, _iso(at) if at else None)
    return await tx.execute(_UPSERT_APPLIED, params) == 1


class DecisionRows:
    """One decision's placement and applied-status rows, each kind written in one statement (`write`); a decision
    names each cluster once, so the order among them does not matter."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._placed: list[tuple[str, str, int | None, str, str]] = []
        self._dropped: list[tuple[str, str]] = []
        self._applied: list[tuple[str, str, int, str, str, str | None]] = []

    def place(self, placement: Placement, digest: str) -> None:
        """The placement, with the digest of the rendering last sent there."""
        self._placed.append((self.name, placement.cluster_id, placement.replicas, _iso(placement.since), digest))

    def drop(self, cluster_id: str) -> None:
        self._dropped.append((self.name, cluster_id))

    def applied(self, cluster_id: str, generation: int, state: AppliedState, message: str, at: datetime | None) -> None:
        """A status, recorded unless a newer generation's is already there (`set_applied`)."""
        self._applied.append((self.name, cluster_id, generation, state.value, message, _iso(at) if at else None))

    def write(self, tx: Writer) -> None:
        for sql, rows in (
            (_PUT_PLACEMENT, self._placed),
            (_DROP_PLACEMENT, self._dropped),
            (_UPSERT_APPLIED, self._applied),
        ):
            if rows:
                tx.executemany(sql, rows)


async def sent_to(tx: Tx, name: str, cluster_id: str) -> Sent:
    """Whether the subscription exists, and the newest generation sent to the cluster (its applied row)."""
    row = await tx.fetchone(
        "SELECT s.generation, a.generation FROM subscriptions s "
        "LEFT JOIN applied a ON a.name = s.name AND a.cluster_id = ? WHERE s.name = ?",
        (cluster_id, name),
    )
    if row is None:
        return Sent(subscription_known=False, generation=None)
    return Sent(subscription_known=True, generation=int(row[1]) if row[1] is not None else None)


def applied_of(tx: SyncTx, name: str) -> list[ClusterApplied]:
    rows = tx.fetchall(
        "SELECT cluster_id, generation, state, message, reported_at FROM applied WHERE name = ? ORDER BY cluster_id",
        (name,),
    )
    return [
        ClusterApplied(
            cluster_id=row["cluster_id"],
            generation=int(row["generation"]),
            state=AppliedState(row["state"]),
            message=row["message"],
            reported_at=datetime.fromisoformat(row["reported_at"]) if row["reported_at"] else None,
        )
        for row in rows
    ]


def applied_counts(tx: SyncTx, after: str, last: str) -> dict[str, tuple[int, int]]:
    """Per subscription named after `after` up to `last` (a page): clusters Applied at its current generation,
    and clusters Failed."""
    rows = tx.fetchall(
        "SELECT a.name, SUM(a.state = 'Applied' AND a.generation = s.generation), SUM(a.state = 'Failed') "
        "FROM applied a JOIN subscriptions s ON s.name = a.name WHERE a.name > ? AND a.name <= ? GROUP BY a.name",
        (after, last),
    )
    return {str(row[0]): (int(row[1] or 0), int(row[2] or 0)) for row in rows}
