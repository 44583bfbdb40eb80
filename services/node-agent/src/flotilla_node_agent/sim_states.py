"""The simulated nodes' state in the sim's journal database, so a restarted sim finds its nodes as it left them.

`flotilla sim` packs its agents into one process over one SQLite journal; this keeps each simulated node's
state (`SimNodeState`: kubelet version, cordon, pods left, faults that fired) in the `sim_nodes` table of
that journal. The driver saves before its call returns, so before the step runner commits the step's
report: a step reported done never has its effect forgotten. Saves are group-committed (`Store.run`).
"""

from __future__ import annotations

import time

import msgspec

from flotilla_node_agent.drivers.base import DriverUnavailable
from flotilla_node_agent.drivers.sim import SimNodeState
from flotilla_runtime.errors import TemporaryError
from flotilla_runtime.store import Store, SyncTx

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(SimNodeState)


class SimNodeStates:
    """Every simulated node's last saved state in one journal; the `StateKeeper` of their drivers."""

    def __init__(self, store: Store, saved: dict[str, bytes]) -> None:
        self.store = store
        self._saved = saved

    @classmethod
    async def load(cls, store: Store) -> SimNodeStates:
        """The states saved in `store` (once, at start: drivers are built synchronously from them)."""
        rows = await store.fetchall("SELECT node_name, state FROM sim_nodes")
        return cls(store, {row["node_name"]: bytes(row["state"]) for row in rows})

    def saved(self, node: str) -> SimNodeState | None:
        """A fresh copy of the node's state as loaded, or None for a node this journal never saw."""
        raw = self._saved.get(node)
        return None if raw is None else _decoder.decode(raw)

    async def save(self, node: str, state: SimNodeState) -> None:
        """Commit the node's state; DriverUnavailable (the step is retried, not reported) when that fails."""
        payload = _encoder.encode(state)  # the state now, not when the write happens

        def write(tx: SyncTx) -> None:
            tx.execute(
                "INSERT INTO sim_nodes (node_name, state, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (node_name) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
                (node, payload, time.time()),
            )

        try:
            await self.store.run(write)
        except TemporaryError as exc:
            raise DriverUnavailable(f"the simulated node's state was not saved: {exc}") from exc
