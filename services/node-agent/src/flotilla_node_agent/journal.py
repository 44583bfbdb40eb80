"""The agent's local journal in SQLite: steps it executed, epochs it obeyed, its cluster credential.

Everything here runs inside a `Store` transaction, so a journal change and the events it causes (the
outbox) commit together (I8). The journal makes commands idempotent across redeliveries and restarts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import msgspec

from flotilla_contracts.v1.agent import NodeStepCommand, NodeStepReported, StepKind
from flotilla_node_agent.domain import JournalEntry, StepStatus
from flotilla_runtime.store import Store, Tx

_report_decoder = msgspec.json.Decoder(NodeStepReported)
_encoder = msgspec.json.Encoder()


@dataclass(frozen=True)
class Membership:
    """What the cluster agent learnt from registration: the cluster id, its credential and state."""

    identity_uid: str
    cluster_id: str
    credential: str | None
    state: str
    reason: str = ""


class Journal:
    """Typed access to the journal tables; every method takes the open transaction."""

    async def entries(self, tx: Tx, cluster_id: str, node_id: str, rollout_id: str) -> list[JournalEntry]:
        rows = await tx.fetchall(
            "SELECT step, status, command_id, epoch, attempt FROM steps "
            "WHERE cluster_id = ? AND node_id = ? AND rollout_id = ?",
            (cluster_id, node_id, rollout_id),
        )
        return [
            JournalEntry(
                StepKind(row["step"]), StepStatus(row["status"]), row["command_id"], row["epoch"], row["attempt"]
            )
            for row in rows
        ]

    async def highest_epoch(self, tx: Tx, cluster_id: str, node_id: str, rollout_id: str) -> int | None:
        row = await tx.fetchone(
            "SELECT epoch FROM epochs WHERE cluster_id = ? AND node_id = ? AND rollout_id = ?",
            (cluster_id, node_id, rollout_id),
        )
        return None if row is None else int(row["epoch"])

    async def obey_epoch(self, tx: Tx, command: NodeStepCommand) -> None:
        """Remember the highest epoch obeyed for the rollout; older ones are refused from now on (I6)."""
        await tx.execute(
            "INSERT INTO epochs (cluster_id, node_id, rollout_id, epoch) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (cluster_id, node_id, rollout_id) DO UPDATE SET epoch = max(epoch, excluded.epoch)",
            (command.cluster_id, command.node_id, command.rollout_id, command.epoch),
        )

    async def begin(self, tx: Tx, command: NodeStepCommand) -> None:
        """Record the step as running, before any side effect on the node (I8)."""
        await tx.execute(
            "INSERT INTO steps (cluster_id, node_id, rollout_id, step, attempt, command_id, epoch, status, "
            "started_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'running', ?) "
            "ON CONFLICT DO UPDATE SET status = 'running', command_id = excluded.command_id, "
            "epoch = excluded.epoch, started_at = excluded.started_at",
            (
                command.cluster_id,
                command.node_id,
                command.rollout_id,
                command.step.value,
                command.attempt,
                command.command_id,
                command.epoch,
                time.time(),
            ),
        )

    async def finish(self, tx: Tx, command: NodeStepCommand, report: NodeStepReported) -> None:
        """Record the final outcome with the report that announced it."""
        status = StepStatus.SUCCEEDED if report.outcome.value == "succeeded" else StepStatus.FAILED
        await tx.execute(
            "UPDATE steps SET status = ?, report = ?, finished_at = ? "
            "WHERE cluster_id = ? AND node_id = ? AND rollout_id = ? AND step = ? AND attempt = ?",
            (
                status.value,
                _encoder.encode(report),
                time.time(),
                command.cluster_id,
                command.node_id,
                command.rollout_id,
                command.step.value,
                command.attempt,
            ),
        )

    async def recorded(self, tx: Tx, command: NodeStepCommand) -> NodeStepReported | None:
        """The final report recorded for this (rollout, node, step, attempt), if it finished."""
        row = await tx.fetchone(
            "SELECT report FROM steps WHERE cluster_id = ? AND node_id = ? AND rollout_id = ? AND step = ? "
            "AND attempt = ? AND report IS NOT NULL",
            (command.cluster_id, command.node_id, command.rollout_id, command.step.value, command.attempt),
        )
        return None if row is None else _report_decoder.decode(row["report"])

    async def membership(self, store: Store, identity_uid: str) -> Membership | None:
        row = await store.fetchone(
            "SELECT identity_uid, cluster_id, credential, state, reason FROM memberships WHERE identity_uid = ?",
            (identity_uid,),
        )
        if row is None:
            return None
        return Membership(row["identity_uid"], row["cluster_id"], row["credential"], row["state"], row["reason"])

    async def save_membership(self, store: Store, membership: Membership) -> None:
        async with store.transaction() as tx:
            await tx.execute(
                "INSERT INTO memberships (identity_uid, cluster_id, credential, state, reason, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (identity_uid) DO UPDATE SET cluster_id = excluded.cluster_id, "
                "credential = coalesce(excluded.credential, credential), state = excluded.state, "
                "reason = excluded.reason, updated_at = excluded.updated_at",
                (
                    membership.identity_uid,
                    membership.cluster_id,
                    membership.credential,
                    membership.state,
                    membership.reason,
                    time.time(),
                ),
            )
