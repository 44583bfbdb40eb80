"""The scheduler's tables (see migrations/0001_init.sql): rows in, plain values out. Nothing else touches SQL."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import msgspec

from flotilla_contracts.v1.common import Resources, Taint
from flotilla_contracts.v1.heartbeat import ClusterHealth
from flotilla_contracts.v1.scheduler import AppliedState, ClusterApplied, PlacementPolicy, SubscriptionSpec
from flotilla_runtime.disruption import Disruption
from flotilla_runtime.store import Row, Store, Tx
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


async def committed_stamp(store: Store) -> str:
    """The stamp of the last committed transaction (read outside any transaction)."""
    row = await store.fetchone(_STAMP_SELECT)
    return str(row[0]) if row is not None else ""


async def swap_stamp(tx: Tx, expected: str, stamp: str) -> bool:
    """Replace the stamp if it still is `expected`; False (nothing written) when it is not."""
    changed = await tx.execute(
        "UPDATE scheduler_meta SET value = ? WHERE key = 'memory' AND value = ?", (stamp, expected)
    )
    return changed == 1


async def set_memory_stamp(tx: Tx, stamp: str) -> None:
    await tx.execute("INSERT OR REPLACE INTO scheduler_meta (key, value) VALUES ('memory', ?)", (stamp,))


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


async def save_subscription(tx: Tx, name: str, sub: SubscriptionRow) -> None:
    await tx.execute(
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


async def delete_subscription(tx: Tx, name: str) -> None:
    for table in ("subscriptions", "placements", "applied"):
        await tx.execute(f"DELETE FROM {table} WHERE name = ?", (name,))


async def put_placement(tx: Tx, name: str, placement: Placement, digest: str) -> None:
    await tx.execute(
        "INSERT OR REPLACE INTO placements (name, cluster_id, replicas, since, digest) VALUES (?, ?, ?, ?, ?)",
        (name, placement.cluster_id, placement.replicas, _iso(placement.since), digest),
    )


async def drop_placement(tx: Tx, name: str, cluster_id: str) -> None:
    await tx.execute("DELETE FROM placements WHERE name = ? AND cluster_id = ?", (name, cluster_id))


async def put_cluster(tx: Tx, cluster_id: str, record: ClusterRecord) -> None:
    await tx.execute(
        "INSERT OR REPLACE INTO clusters (cluster_id, record) VALUES (?, ?)", (cluster_id, _enc.encode(record))
    )


async def set_applied(
    tx: Tx, name: str, cluster_id: str, generation: int, state: AppliedState, message: str, at: datetime | None
) -> bool:
    """Record a status unless a newer generation's is already there; True when recorded."""
    row = await tx.fetchone("SELECT generation FROM applied WHERE name = ? AND cluster_id = ?", (name, cluster_id))
    if row is not None and int(row[0]) > generation:
        return False
    await tx.execute(
        "INSERT OR REPLACE INTO applied (name, cluster_id, generation, state, message, reported_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (name, cluster_id, generation, state.value, message, _iso(at) if at else None),
    )
    return True


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


async def applied_of(store: Store, name: str) -> list[ClusterApplied]:
    rows = await store.fetchall(
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


async def applied_counts(store: Store) -> dict[str, tuple[int, int]]:
    """Per subscription: clusters Applied at its current generation, and clusters Failed."""
    rows = await store.fetchall(
        "SELECT a.name, SUM(a.state = 'Applied' AND a.generation = s.generation), SUM(a.state = 'Failed') "
        "FROM applied a JOIN subscriptions s ON s.name = a.name GROUP BY a.name"
    )
    return {str(row[0]): (int(row[1] or 0), int(row[2] or 0)) for row in rows}
