"""Registration's tables, read and written inside one-hop transactions (`Store.run`); no rules here."""

from __future__ import annotations

import time

import msgspec

from flotilla_contracts.v1.agent import HostKey, NodeFacts
from flotilla_contracts.v1.registration import ClusterInfo, ClusterState, JoinTokenInfo, NodeInfo
from flotilla_runtime.store import Row, SyncTx

_enc = msgspec.json.Encoder()
_cluster_dec = msgspec.json.Decoder(ClusterInfo)
_node_dec = msgspec.json.Decoder(NodeInfo)
_token_dec = msgspec.json.Decoder(JoinTokenInfo)
_keys_dec = msgspec.json.Decoder(list[HostKey])
LIVE = f"state != '{ClusterState.DEREGISTERED.value}'"


def decode_cluster(row: Row) -> ClusterInfo:
    return _cluster_dec.decode(row["info"])


def decode_node(row: Row) -> NodeInfo:
    return _node_dec.decode(row["info"])


# --- tokens ------------------------------------------------------------------------------------------------


def insert_token(tx: SyncTx, info: JoinTokenInfo, secret_hash: str) -> None:
    tx.execute("INSERT INTO tokens VALUES (?, ?, ?)", (info.token_id, secret_hash, _enc.encode(info)))


def get_token(tx: SyncTx, token_id: str) -> tuple[JoinTokenInfo, str] | None:
    row = tx.fetchone("SELECT info, secret_hash FROM tokens WHERE token_id = ?", (token_id,))
    return None if row is None else (_token_dec.decode(row["info"]), row["secret_hash"])


def update_token(tx: SyncTx, info: JoinTokenInfo) -> None:
    tx.execute("UPDATE tokens SET info = ? WHERE token_id = ?", (_enc.encode(info), info.token_id))


def all_tokens(tx: SyncTx) -> list[JoinTokenInfo]:
    return [_token_dec.decode(row["info"]) for row in tx.fetchall("SELECT info FROM tokens")]


# --- clusters ----------------------------------------------------------------------------------------------


def get_cluster(tx: SyncTx, cluster_id: str) -> ClusterInfo | None:
    row = tx.fetchone("SELECT info FROM clusters WHERE cluster_id = ?", (cluster_id,))
    return None if row is None else decode_cluster(row)


def live_cluster_by_uid(tx: SyncTx, uid: str) -> ClusterInfo | None:
    row = tx.fetchone(f"SELECT info FROM clusters WHERE uid = ? AND {LIVE}", (uid,))
    return None if row is None else decode_cluster(row)


def live_cluster_by_name(tx: SyncTx, name: str) -> ClusterInfo | None:
    row = tx.fetchone(f"SELECT info FROM clusters WHERE name = ? AND {LIVE}", (name,))
    return None if row is None else decode_cluster(row)


def memberships_of(tx: SyncTx, uid: str) -> int:
    row = tx.fetchone("SELECT COUNT(*) AS n FROM clusters WHERE uid = ?", (uid,))
    return int(row["n"]) if row else 0


def save_cluster(tx: SyncTx, cluster: ClusterInfo) -> None:
    tx.execute(
        "INSERT INTO clusters VALUES (?, ?, ?, ?, ?) ON CONFLICT(cluster_id) DO UPDATE SET "
        "uid = excluded.uid, name = excluded.name, state = excluded.state, info = excluded.info",
        (cluster.cluster_id, cluster.identity.uid, cluster.identity.name, cluster.state.value, _enc.encode(cluster)),
    )


# --- nodes -------------------------------------------------------------------------------------------------


def nodes_of(tx: SyncTx, cluster_id: str) -> dict[str, NodeInfo]:
    rows = tx.fetchall("SELECT info FROM nodes WHERE cluster_id = ?", (cluster_id,))
    nodes = [decode_node(row) for row in rows]
    return {node.facts.node_id: node for node in nodes}


def save_nodes(tx: SyncTx, nodes: list[NodeInfo]) -> None:
    tx.executemany(
        "INSERT INTO nodes VALUES (?, ?, ?) ON CONFLICT(cluster_id, node_id) DO UPDATE SET info = excluded.info",
        [(node.cluster_id, node.facts.node_id, _enc.encode(node)) for node in nodes],
    )


def delete_nodes(tx: SyncTx, cluster_id: str, node_ids: list[str]) -> None:
    """Remove nodes from the inventory, and their key bindings with them (a node name that returns binds afresh)."""
    rows = [(cluster_id, n) for n in node_ids]
    tx.executemany("DELETE FROM nodes WHERE cluster_id = ? AND node_id = ?", rows)
    tx.executemany("DELETE FROM node_keys WHERE cluster_id = ? AND node_id = ?", rows)


def node_facts(nodes: dict[str, NodeInfo]) -> dict[str, NodeFacts]:
    return {node_id: node.facts for node_id, node in nodes.items()}


# --- join idempotency and host keys ------------------------------------------------------------------------


def prior_join(tx: SyncTx, request_id: str) -> Row | None:
    return tx.fetchone("SELECT cluster_id, uid, rejoined FROM join_requests WHERE request_id = ?", (request_id,))


def record_join(tx: SyncTx, request_id: str, cluster_id: str, uid: str, rejoined: bool) -> None:
    tx.execute(
        "INSERT INTO join_requests VALUES (?, ?, ?, ?, ?)", (request_id, cluster_id, uid, int(rejoined), time.time())
    )


def host_keys_revision(tx: SyncTx, cluster_id: str) -> int:
    row = tx.fetchone("SELECT revision FROM host_keys WHERE cluster_id = ?", (cluster_id,))
    return int(row["revision"]) if row else 0


def save_host_keys(tx: SyncTx, cluster_id: str, revision: int, keys: list[HostKey]) -> None:
    tx.execute(
        "INSERT INTO host_keys VALUES (?, ?, ?) ON CONFLICT(cluster_id) DO UPDATE SET "
        "revision = excluded.revision, keys = excluded.keys",
        (cluster_id, revision, _enc.encode(keys)),
    )


# --- node keys: which public nkey proved each node first (0002_node_keys.sql) -----------------------------


def node_key(tx: SyncTx, cluster_id: str, node_id: str) -> str | None:
    row = tx.fetchone("SELECT nkey FROM node_keys WHERE cluster_id = ? AND node_id = ?", (cluster_id, node_id))
    return None if row is None else str(row["nkey"])


def bind_node_key(tx: SyncTx, cluster_id: str, node_id: str, nkey: str) -> None:
    tx.execute("INSERT INTO node_keys VALUES (?, ?, ?, ?)", (cluster_id, node_id, nkey, time.time()))


def has_node(tx: SyncTx, cluster_id: str, node_id: str) -> bool:
    return tx.fetchone("SELECT 1 FROM nodes WHERE cluster_id = ? AND node_id = ?", (cluster_id, node_id)) is not None


def forget_node_keys(tx: SyncTx, cluster_id: str) -> None:
    """Drop every node binding of a cluster (it was deregistered: a later membership binds afresh)."""
    tx.execute("DELETE FROM node_keys WHERE cluster_id = ?", (cluster_id,))
