"""Every cluster, decoded, for `clusters.list`: loaded once, then kept current from the `cluster_changes` log.

The table's triggers (migration 0003) log each cluster row written; before each read the cache takes the rows
logged since it last looked and decodes only those clusters again. So a fleet joining at once (every join a
write) costs a list page the clusters that changed, not all of them. Memory never leads disk: the cache holds
only what it read back from the table.
"""

from __future__ import annotations

from flotilla_contracts.v1.registration import ClusterInfo
from flotilla_registration import store as repo
from flotilla_runtime.store import Store, SyncTx

PRUNE_EVERY = 10_000  # log rows read before the cache deletes them


class ClusterCache:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._by_id: dict[str, ClusterInfo] | None = None
        self._ordered: list[ClusterInfo] | None = None  # by name, then id
        self._seen = 0  # the last cluster_changes seq applied
        self._unpruned = 0
        self.decoded = 0  # clusters decoded since start (load included), for tests and profiles

    async def all(self) -> list[ClusterInfo]:
        """Every cluster row (Deregistered included), by name then id, as of now."""
        if self._by_id is None:
            await self._load()
        else:
            await self._catch_up()
        if self._ordered is None:
            assert self._by_id is not None
            self._ordered = sorted(self._by_id.values(), key=lambda c: (c.identity.name, c.cluster_id))
        return self._ordered

    async def _load(self) -> None:
        row = await self.store.fetchone("SELECT COALESCE(MAX(seq), 0) AS seq FROM cluster_changes")
        seen = int(row["seq"]) if row else 0  # first: a write after it is read again below, never lost
        rows = await self.store.fetchall("SELECT info FROM clusters")
        self._by_id = {c.cluster_id: c for c in map(repo.decode_cluster, rows)}
        self.decoded += len(rows)
        self._seen, self._ordered = seen, None

    async def _catch_up(self) -> None:
        assert self._by_id is not None
        changes = await self.store.fetchall(
            "SELECT seq, cluster_id FROM cluster_changes WHERE seq > ? ORDER BY seq", (self._seen,)
        )
        if not changes:
            return
        ids = sorted({str(row["cluster_id"]) for row in changes})
        rows = await self.store.fetchall(
            f"SELECT info FROM clusters WHERE cluster_id IN ({','.join('?' * len(ids))})", ids
        )
        fresh = {c.cluster_id: c for c in map(repo.decode_cluster, rows)}
        for cluster_id in ids:
            if cluster_id in fresh:
                self._by_id[cluster_id] = fresh[cluster_id]
            else:
                self._by_id.pop(cluster_id, None)
        self.decoded += len(rows)
        self._seen = int(changes[-1]["seq"])
        self._ordered = None
        self._unpruned += len(changes)
        if self._unpruned >= PRUNE_EVERY:
            self._unpruned = 0
            seen = self._seen
            await self.store.run(lambda tx: prune(tx, seen))


def prune(tx: SyncTx, seen: int) -> None:
    tx.execute("DELETE FROM cluster_changes WHERE seq <= ?", (seen,))
