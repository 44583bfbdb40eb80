"""The heartbeat service's tables: membership, inventory, and health checkpointed in batches."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

import msgspec

from flotilla_heartbeat.domain import HealthModel
from flotilla_heartbeat.health_state import Cluster, Facts, Node
from flotilla_runtime.store import Row, Store, Tx

_facts_encoder = msgspec.msgpack.Encoder()
_facts_decoder = msgspec.msgpack.Decoder(Facts)

CHUNK = 2000
_UPSERT_NODE = (
    "INSERT INTO hb_nodes (cluster_id, node_id, node_name, state, since, reason, last_seen, seq, skew, facts) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (cluster_id, node_id) DO UPDATE SET "
    "node_name = excluded.node_name, state = excluded.state, since = excluded.since, reason = excluded.reason, "
    "last_seen = excluded.last_seen, seq = excluded.seq, skew = excluded.skew, facts = excluded.facts"
)
_UPSERT_CLUSTER = (
    "INSERT INTO hb_clusters (cluster_id, state, since, reason, message) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (cluster_id) DO UPDATE SET state = excluded.state, since = excluded.since, "
    "reason = excluded.reason, message = excluded.message"
)


async def membership_epoch(store: Store) -> str:
    """A random id made once per state file: the membership consumer is named after it, so a fresh file replays."""
    async with store.transaction() as tx:
        row = await tx.fetchone("SELECT value FROM hb_meta WHERE key = 'epoch'")
        if row is not None:
            return str(row[0])
        epoch = uuid.uuid4().hex[:12]
        await tx.execute("INSERT INTO hb_meta (key, value) VALUES ('epoch', ?)", (epoch,))
        return epoch


async def load_members(store: Store) -> dict[str, str]:
    return {row[0]: row[1] for row in await store.fetchall("SELECT cluster_id, state FROM hb_members")}


async def load_inventory(store: Store) -> list[tuple[str, str, str]]:
    rows = await store.fetchall("SELECT cluster_id, node_id, node_name FROM hb_inventory")
    return [(row[0], row[1], row[2]) for row in rows]


async def set_member(tx: Tx, cluster_id: str, state: str, at: str) -> None:
    await tx.execute(
        "INSERT INTO hb_members (cluster_id, state, updated_at) VALUES (?, ?, ?) "
        "ON CONFLICT (cluster_id) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
        (cluster_id, state, at),
    )


async def forget_cluster(tx: Tx, cluster_id: str) -> None:
    for table in ("hb_inventory", "hb_nodes", "hb_clusters"):
        await tx.execute(f"DELETE FROM {table} WHERE cluster_id = ?", (cluster_id,))


async def add_inventory(tx: Tx, cluster_id: str, node_id: str, node_name: str) -> None:
    await tx.execute(
        "INSERT OR REPLACE INTO hb_inventory (cluster_id, node_id, node_name) VALUES (?, ?, ?)",
        (cluster_id, node_id, node_name),
    )


async def remove_inventory(tx: Tx, cluster_id: str, node_id: str) -> None:
    await tx.execute("DELETE FROM hb_inventory WHERE cluster_id = ? AND node_id = ?", (cluster_id, node_id))
    await tx.execute("DELETE FROM hb_nodes WHERE cluster_id = ? AND node_id = ?", (cluster_id, node_id))


def node_row(model: HealthModel, node: Node) -> tuple[object, ...]:
    offset = model.wall_offset
    return (
        node.cluster_id,
        node.node_id,
        node.node_name,
        node.state.value if node.state else None,
        node.since + offset,
        node.reason,
        node.heard + offset if node.heard >= 0 else None,
        node.seq,
        node.skew,
        _facts_encoder.encode(node.facts) if node.facts else None,
    )


def cluster_row(model: HealthModel, cluster: Cluster) -> tuple[object, ...]:
    state = cluster.state.value if cluster.state else "Unknown"
    return (cluster.cluster_id, state, cluster.since + model.wall_offset, cluster.reason, cluster.message)


async def checkpoint(
    store: Store, model: HealthModel, keys: Iterable[tuple[str, str]], clusters: Iterable[Cluster]
) -> int:
    """Write the changed nodes and clusters in one transaction; returns the number of node rows."""
    rows = []
    for cluster_id, node_id in keys:
        cluster = model.clusters.get(cluster_id)
        node = cluster.nodes.get(node_id) if cluster else None
        if node is not None:
            rows.append(node_row(model, node))
    cluster_rows = [cluster_row(model, c) for c in clusters if c.state is not None]
    for start in range(0, max(len(rows), 1), CHUNK):  # short transactions: health events interleave
        async with store.transaction() as tx:
            await tx.executemany(_UPSERT_NODE, rows[start : start + CHUNK])
            if start == 0:
                await tx.executemany(_UPSERT_CLUSTER, cluster_rows)
    return len(rows)


async def load_health(store: Store) -> tuple[list[Row], list[Row]]:
    """Checkpointed nodes and clusters, as rows keyed by column name."""
    return await store.fetchall("SELECT * FROM hb_nodes"), await store.fetchall("SELECT * FROM hb_clusters")


def decode_facts(blob: bytes | None) -> Facts | None:
    return _facts_decoder.decode(blob) if blob else None
