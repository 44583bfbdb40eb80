"""The orchestrator's tables, read and written inside `Store.run` works; no rules here."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import msgspec

from flotilla_contracts.v1.agent import StepKind
from flotilla_contracts.v1.upgrade import UpgradePlan
from flotilla_runtime.disruption import Disruption
from flotilla_runtime.store import SyncTx
from flotilla_upgrade_orchestrator.fleet import FleetCluster
from flotilla_upgrade_orchestrator.model import ClusterRec, FailureRec, NodeRec, Rollout, RolloutRec

_enc = msgspec.json.Encoder()
_rollout_dec = msgspec.json.Decoder(RolloutRec)
_plan_dec = msgspec.json.Decoder(UpgradePlan)
_cluster_dec = msgspec.json.Decoder(ClusterRec)
_node_dec = msgspec.json.Decoder(NodeRec)
_failure_dec = msgspec.json.Decoder(FailureRec)
_fleet_dec = msgspec.json.Decoder(FleetCluster)
_disruption_dec = msgspec.json.Decoder(Disruption)


def insert_rollout(tx: SyncTx, rollout: Rollout) -> None:
    """A new rollout with its pinned plan, clusters and nodes."""
    save_rollout(tx, rollout.rec)
    tx.execute("INSERT INTO rollout_plans VALUES (?, ?)", (rollout.rollout_id, _enc.encode(rollout.plan)))
    for cluster in rollout.clusters.values():
        save_cluster(tx, rollout.rollout_id, cluster)
    save_nodes(
        tx,
        [
            ((rollout.rollout_id, cluster.cluster_id, node.node_id), node)
            for cluster in rollout.clusters.values()
            for node in cluster.nodes
        ],
    )
    if rollout.rec.request_id:
        tx.execute("INSERT INTO start_requests VALUES (?, ?)", (rollout.rec.request_id, rollout.rollout_id))


def rollout_for_request(tx: SyncTx, request_id: str) -> str | None:
    row = tx.fetchone("SELECT rollout_id FROM start_requests WHERE request_id = ?", (request_id,))
    return None if row is None else str(row["rollout_id"])


def save_rollout(tx: SyncTx, rec: RolloutRec) -> None:
    tx.execute(
        "INSERT INTO rollouts VALUES (?, ?, ?, ?) ON CONFLICT(rollout_id) DO UPDATE SET "
        "state = excluded.state, record = excluded.record",
        (rec.rollout_id, rec.created_at, rec.state.value, _enc.encode(rec)),
    )


def save_cluster(tx: SyncTx, rollout_id: str, cluster: ClusterRec) -> None:
    row = msgspec.structs.replace(cluster, nodes=[])
    tx.execute(
        "INSERT INTO rollout_clusters VALUES (?, ?, ?, ?) ON CONFLICT(rollout_id, cluster_id) DO UPDATE SET "
        "record = excluded.record",
        (rollout_id, cluster.cluster_id, cluster.wave * 1_000_000 + cluster.order, _enc.encode(row)),
    )


def save_nodes(tx: SyncTx, nodes: list[tuple[tuple[str, str, str], NodeRec]]) -> None:
    tx.executemany(
        "INSERT INTO rollout_nodes VALUES (?, ?, ?, ?) ON CONFLICT(rollout_id, cluster_id, node_id) DO UPDATE SET "
        "record = excluded.record",
        [(key[0], key[1], key[2], _enc.encode(node)) for key, node in nodes],
    )


def add_failure(tx: SyncTx, rollout_id: str, failure: FailureRec) -> None:
    tx.execute("INSERT INTO rollout_failures (rollout_id, record) VALUES (?, ?)", (rollout_id, _enc.encode(failure)))


def record_command(
    tx: SyncTx,
    command_id: str,
    rollout_id: str,
    cluster_id: str,
    node: NodeRec,
    step: StepKind,
    epoch: int,
    now: datetime,
) -> bool:
    """Remember an issued command; False when that id was issued before (it must not go out again, I4)."""
    return (
        tx.execute(
            "INSERT OR IGNORE INTO commands VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                command_id,
                rollout_id,
                cluster_id,
                node.node_id,
                step.value,
                node.attempt,
                "rollback" if node.rollback else "forward",
                epoch,
                now.timestamp(),
            ),
        )
        == 1
    )


def issued_command_id(tx: SyncTx, rollout_id: str, cluster_id: str, node: NodeRec, step: StepKind) -> str | None:
    """The id under which this (rollout, node, step, attempt, direction) was issued, if it was."""
    row = tx.fetchone(
        "SELECT command_id FROM commands WHERE rollout_id = ? AND cluster_id = ? AND node_id = ? AND step = ? "
        "AND attempt = ? AND direction = ?",
        (rollout_id, cluster_id, node.node_id, step.value, node.attempt, "rollback" if node.rollback else "forward"),
    )
    return None if row is None else str(row["command_id"])


def command_rollout(tx: SyncTx, command_id: str, cluster_id: str, node_id: str) -> str | None:
    """The rollout of command `command_id` if it was sent to exactly this cluster and node, else None."""
    row = tx.fetchone(
        "SELECT rollout_id FROM commands WHERE command_id = ? AND cluster_id = ? AND node_id = ?",
        (command_id, cluster_id, node_id),
    )
    return None if row is None else str(row["rollout_id"])


def load_command_key(tx: SyncTx) -> bytes | None:
    """The secret that keys command ids (made once by migration 0002), None when it is missing."""
    row = tx.fetchone("SELECT value FROM secrets WHERE name = 'command_key'")
    value = None if row is None else row["value"]
    return bytes(value) if isinstance(value, bytes) and len(value) >= 32 else None


def load_rollouts(tx: SyncTx) -> dict[str, Rollout]:
    rollouts: dict[str, Rollout] = {}
    plans = {row["rollout_id"]: row["plan"] for row in tx.fetchall("SELECT rollout_id, plan FROM rollout_plans")}
    for row in tx.fetchall("SELECT record FROM rollouts ORDER BY created_at, rollout_id"):
        rec = _rollout_dec.decode(row["record"])
        rollouts[rec.rollout_id] = Rollout(rec=rec, plan=_plan_dec.decode(plans[rec.rollout_id]))
    for row in tx.fetchall("SELECT rollout_id, record FROM rollout_clusters ORDER BY rollout_id, position"):
        cluster = _cluster_dec.decode(row["record"])
        rollouts[row["rollout_id"]].clusters[cluster.cluster_id] = cluster
    for row in tx.fetchall("SELECT rollout_id, cluster_id, record FROM rollout_nodes"):
        rollouts[row["rollout_id"]].clusters[row["cluster_id"]].nodes.append(_node_dec.decode(row["record"]))
    for rollout in rollouts.values():
        for cluster in rollout.clusters.values():
            cluster.nodes.sort(key=lambda n: n.order)
    for row in tx.fetchall("SELECT rollout_id, record FROM rollout_failures ORDER BY seq"):
        rollouts[row["rollout_id"]].failures.append(_failure_dec.decode(row["record"]))
    return rollouts


def save_fleet_cluster(tx: SyncTx, cluster: FleetCluster | None, cluster_id: str) -> None:
    if cluster is None:
        tx.execute("DELETE FROM fleet_clusters WHERE cluster_id = ?", (cluster_id,))
        return
    tx.execute(
        "INSERT INTO fleet_clusters VALUES (?, ?) ON CONFLICT(cluster_id) DO UPDATE SET record = excluded.record",
        (cluster_id, _enc.encode(cluster)),
    )


def load_fleet(tx: SyncTx) -> dict[str, FleetCluster]:
    return {
        cluster.cluster_id: cluster
        for cluster in (_fleet_dec.decode(row["record"]) for row in tx.fetchall("SELECT record FROM fleet_clusters"))
    }


def save_disruption(tx: SyncTx, disrupted: Iterable[Disruption]) -> None:
    """The groups disrupted now (replacing what was)."""
    tx.execute("DELETE FROM fleet_disruption")
    for found in disrupted:
        tx.execute("INSERT INTO fleet_disruption VALUES (?, ?, ?)", (found.label, found.value, _enc.encode(found)))


def load_disruption(tx: SyncTx) -> list[Disruption]:
    return [_disruption_dec.decode(row["record"]) for row in tx.fetchall("SELECT record FROM fleet_disruption")]


def data_version(tx: SyncTx) -> int:
    """SQLite's count of commits made by other connections (another process on the same file) as seen here."""
    row = tx.fetchone("PRAGMA data_version")
    return 0 if row is None else int(row[0])


def command_epoch(tx: SyncTx, command_id: str) -> int | None:
    """The lease epoch the command `command_id` was last sent at, None when it was never issued."""
    row = tx.fetchone("SELECT epoch FROM commands WHERE command_id = ?", (command_id,))
    return None if row is None else int(row["epoch"])


def resent_command(tx: SyncTx, command_id: str, epoch: int, now: datetime) -> None:
    """The command went out again at a newer epoch (a takeover re-sends what was in flight, same id)."""
    tx.execute(
        "UPDATE commands SET epoch = ?, issued_at = ? WHERE command_id = ?", (epoch, now.timestamp(), command_id)
    )
