"""The key that signs cluster credentials: its own file (0600), never minted again while the fleet has members.

Older versions kept it in the `secrets` table; the first start of this version moves it to `signing.key` and
leaves only its fingerprint in the database, so a key file and a database that do not belong together are
refused instead of silently failing every cluster's credential. `decide` is the rule (pure); `load` gathers
the facts, asks the bus only when a new key would be minted, and applies the decision.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import nats
import nats.errors
import nats.js.errors

from flotilla_contracts.streams import FLEET_EVENTS
from flotilla_contracts.subjects import Entity, entity_events
from flotilla_runtime import logins
from flotilla_runtime.integrity import FILE_MODE, StateRefused, private_folder
from flotilla_runtime.logs import BoundLogger
from flotilla_runtime.natsconn import connect_options
from flotilla_runtime.store import Store, SyncTx

KEY_FILE = "signing.key"
_LEGACY = "credential_key"  # the `secrets` row older versions kept the key in
_FINGERPRINT = "credential_key_fingerprint"  # the `secrets` row that ties the database to its key file
RESET = (
    "only if the fleet is truly new (no cluster to keep): `flotilla down`, delete the state folder (FLEET_EVENTS "
    "is in it) and `flotilla up` again; in Kubernetes delete every service's volume and the FLEET_EVENTS stream"
)


class Action(enum.Enum):
    USE = "use"  # the key file, and the database agrees (records the fingerprint if it has none)
    MIGRATE = "migrate"  # write the database's key to the file, keep its fingerprint, drop the row
    MINT = "mint"  # a new fleet: a new key
    ASK_FLEET = "ask-fleet"  # decide again once we know whether FLEET_EVENTS has cluster events
    REFUSE = "refuse"


@dataclass(frozen=True)
class Facts:
    """What is on disk: the key file's key, the database's legacy key and fingerprint, how many clusters it has."""

    file_key: bytes | None
    legacy_key: bytes | None
    fingerprint: str | None
    clusters: int


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str = ""


def fingerprint(key: bytes) -> str:
    return hmac.new(key, b"flotilla credential key fingerprint", hashlib.sha256).hexdigest()


def decide(facts: Facts, key_path: Path, db_path: str, fleet_has_members: bool | None) -> Decision:
    """What to do with the signing key at start; `fleet_has_members` is None until the bus was asked."""
    backup = f"restore {key_path} and {db_path} together from the same backup (stop registration first)"
    if facts.file_key is not None:
        legacy = fingerprint(facts.legacy_key) if facts.legacy_key is not None else None
        recorded = facts.fingerprint or legacy
        if recorded is not None:
            if recorded != fingerprint(facts.file_key):
                why = f"{key_path} is not the key of {db_path} (no credential of its clusters would verify)"
                return Decision(Action.REFUSE, f"{why}; {backup}")
            return Decision(Action.USE)
        if facts.clusters:  # a database with clusters but no fingerprint was not written by this version
            why = f"{db_path} has {facts.clusters} clusters but no record of {key_path}"
            return Decision(Action.REFUSE, f"{why}; {backup}")
        if fleet_has_members is None:
            return Decision(Action.ASK_FLEET)
        if fleet_has_members:
            why = f"{db_path} has no clusters but FLEET_EVENTS has cluster events (the database was lost or replaced)"
            return Decision(Action.REFUSE, f"{why}; {backup}; {RESET}")
        return Decision(Action.USE)
    if facts.legacy_key is not None:
        return Decision(Action.MIGRATE)
    if facts.fingerprint is not None or facts.clusters:
        why = f"{key_path} is missing while {db_path} has clusters whose credentials it signed"
        return Decision(Action.REFUSE, f"{why}; {backup}; a new key would lock every cluster out")
    if fleet_has_members is None:
        return Decision(Action.ASK_FLEET)
    if fleet_has_members:
        why = f"{key_path} is missing and {db_path} has no clusters, but FLEET_EVENTS has cluster events"
        return Decision(Action.REFUSE, f"{why} (the fleet has members); {backup}; {RESET}")
    return Decision(Action.MINT)


def read_facts(tx: SyncTx, key_path: Path) -> Facts:
    rows = {row["name"]: bytes(row["value"]) for row in tx.fetchall("SELECT name, value FROM secrets")}
    count = tx.fetchone("SELECT COUNT(*) FROM clusters")
    return Facts(
        file_key=_read_key(key_path),
        legacy_key=rows.get(_LEGACY),
        fingerprint=rows[_FINGERPRINT].decode() if _FINGERPRINT in rows else None,
        clusters=int(count[0]) if count else 0,
    )


def _read_key(path: Path) -> bytes | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < 16:
        raise StateRefused(f"{path} is not a signing key (at least 32 hex digits); restore it from a backup")
    return key


def _write_key(path: Path, key: bytes) -> None:
    """Owner-only, and whole or not at all: a temporary file made 0600, synced, renamed, the folder synced."""
    private_folder(path.parent)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(fd, "w") as out:
        out.write(key.hex() + "\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _record(tx: SyncTx, key: bytes) -> None:
    tx.execute("INSERT OR REPLACE INTO secrets VALUES (?, ?)", (_FINGERPRINT, fingerprint(key).encode()))
    tx.execute("DELETE FROM secrets WHERE name = ?", (_LEGACY,))


async def fleet_has_members(nats_url: str, log: BoundLogger) -> bool:
    """True when FLEET_EVENTS holds any cluster event; waits (with back-off) for the bus to answer: a server not
    up yet, or JetStream without a leader yet (a bus of several servers electing one) is asked again."""
    delay = 0.5
    while True:
        try:
            return await _ask_fleet(nats_url)
        except (OSError, nats.errors.Error, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            log.warning("cannot ask FLEET_EVENTS whether the fleet has members (%s); retrying in %.1fs", reason, delay)
        await asyncio.sleep(delay)  # sleep: the back-off before asking again
        delay = min(delay * 2, 10.0)


async def _ask_fleet(nats_url: str) -> bool:
    nc = await logins.connect(
        nats_url, name="flotilla-registration-keycheck", allow_reconnect=False, **connect_options(nats_url)
    )
    try:
        info = await nc.jetstream().stream_info(FLEET_EVENTS.name, subjects_filter=entity_events(Entity.CLUSTER))
    except nats.js.errors.NotFoundError:
        return False  # no stream yet: nothing ever happened on this bus
    finally:
        await nc.close()
    return bool(info.state.subjects)


async def load(store: Store, configured: str, ask_fleet: Callable[[], Awaitable[bool]], log: BoundLogger) -> bytes:
    """The signing key: the configured one, or `signing.key` (migrated from the database once, minted for a
    new fleet); raises `StateRefused` when the key or the database was lost while the fleet has members."""
    if configured:
        return configured.encode()
    key_path = Path(store.path).parent / KEY_FILE  # beside the database, in the service's state folder
    facts = await store.run(lambda tx: read_facts(tx, key_path))
    decision = decide(facts, key_path, store.path, None)
    if decision.action is Action.ASK_FLEET:
        decision = decide(facts, key_path, store.path, await ask_fleet())
    if decision.action is Action.REFUSE:
        raise StateRefused(f"refusing to start: {decision.reason}")
    if decision.action is Action.USE:
        assert facts.file_key is not None
        key = facts.file_key
    elif decision.action is Action.MIGRATE:
        assert facts.legacy_key is not None
        key = facts.legacy_key
        _write_key(key_path, key)
        log.info("moved the credential signing key out of %s into %s (0600)", store.path, key_path)
    else:
        key = secrets.token_bytes(32)
        _write_key(key_path, key)
        log.info("a new fleet: minted the signing key %s (0600); back it up with %s", key_path, store.path)
    await store.run(lambda tx: _record(tx, key))
    return key
