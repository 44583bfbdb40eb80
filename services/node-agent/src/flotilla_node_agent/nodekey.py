"""Each node's own key: an ed25519 NATS user nkey, made once and kept in the agent's state database.

A node's login (`c.<cluster>.<node>`) carries the cluster credential *and* this key: nats-py signs the server's
nonce with the seed, and registration's auth callout binds the node to the public key on its first login and
refuses any other key for it afterwards (docs/security.md, "Per-node identity"). The seed never leaves the
node; losing it (a wiped state folder) means the node is refused until its binding is dropped, which happens
when the node leaves its cluster's inventory or the cluster is deregistered.
"""

from __future__ import annotations

import logging
import os
import time

import nkeys  # untyped (nkeys 0.2.1): the workspace's mypy config lets it in as Any

from flotilla_runtime.store import Store, SyncTx

log = logging.getLogger("flotilla.node-agent.nodekey")


def new_seed() -> str:
    """A fresh user nkey seed ("SU...")."""
    seed: bytes = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    return seed.decode()


def public_key(seed: str) -> str:
    """The "U..." public key of a user seed: what registration binds the node to."""
    key: bytes = nkeys.from_seed(seed.encode()).public_key
    return key.decode()


async def node_seed(store: Store, node_id: str) -> str:
    """The node's seed from `store`, made and committed on first use (one transaction: two callers get one)."""

    def load_or_make(tx: SyncTx) -> tuple[str, bool]:
        row = tx.fetchone("SELECT seed FROM node_keys WHERE node_id = ?", (node_id,))
        if row is not None:
            return str(row["seed"]), False
        seed = new_seed()
        tx.execute("INSERT INTO node_keys VALUES (?, ?, ?)", (node_id, seed, time.time()))
        return seed, True

    seed, made = await store.run(load_or_make)
    if made:
        log.info("made the key of node %s: %s", node_id, public_key(seed), extra={"node": node_id})
    return seed
