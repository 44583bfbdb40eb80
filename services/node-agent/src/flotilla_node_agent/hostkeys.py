"""SSH `authorized_keys` for a configured user, from the key set published for the agent's cluster.

Our keys live in a managed block between two marker lines; the user's own lines outside it are kept
as they are. Each write is atomic (temporary file, fsync, rename) and keeps the file's owner and mode.
The set comes from `fleet.v1.evt.host-keys.<cluster>.set` (HostKeysSet): the last one at start, then
each new one; an older revision never replaces a newer one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import tempfile
from pathlib import Path

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from flotilla_contracts import catalogue
from flotilla_contracts.streams import FLEET_EVENTS
from flotilla_contracts.v1.agent import HostKey, HostKeysSet
from flotilla_runtime.logs import BoundLogger

BEGIN = "# BEGIN flotilla managed keys: edits inside this block are replaced"
END = "# END flotilla managed keys"
_decoder = msgspec.json.Decoder(HostKeysSet)


def render(existing: str, keys: list[HostKey], revision: int) -> str:
    """The file with the managed block replaced (or removed when there are no keys); other lines kept."""
    kept: list[str] = []
    inside = False
    for line in existing.splitlines():
        if line.strip() == BEGIN:
            inside = True
        elif line.strip() == END and inside:
            inside = False
        elif not inside:
            kept.append(line)
    while kept and not kept[-1].strip():
        kept.pop()
    if keys:
        block = [BEGIN, f"# revision {revision}"]
        block += [f"{k.key} {k.comment}".rstrip() for k in keys]
        block.append(END)
        kept += ([""] if kept else []) + block
    return "\n".join(kept) + "\n" if kept else ""


def managed_revision(text: str) -> int:
    """The revision written in the managed block, 0 when there is none."""
    lines = text.splitlines()
    for before, line in itertools.pairwise(lines):
        if before.strip() == BEGIN and line.startswith("# revision "):
            with contextlib.suppress(ValueError):
                return int(line.removeprefix("# revision "))
    return 0


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    stat = path.stat() if path.exists() else None
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".authorized_keys.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, stat.st_mode & 0o777 if stat else 0o600)
        if stat is not None and hasattr(os, "chown"):
            with contextlib.suppress(PermissionError):
                os.chown(tmp, stat.st_uid, stat.st_gid)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def apply(path: Path, keys_set: HostKeysSet) -> bool:
    """Reconcile the file with a key set; False when it is older than what the file holds or unchanged."""
    existing = path.read_text() if path.exists() else ""
    if keys_set.revision < managed_revision(existing):
        return False
    wanted = render(existing, list(keys_set.keys), keys_set.revision)
    if wanted == existing:
        return False
    write_atomic(path, wanted)
    return True


class HostKeysReconciler:
    """Follows one cluster's key set: the last one stored at start, then every new one (core NATS)."""

    def __init__(
        self, nc: Client, js: JetStreamContext, cluster_id: str, path: Path, log: BoundLogger, resync_s: float = 300.0
    ) -> None:
        self.nc, self.js, self.path, self.log = nc, js, path, log
        self.subject = catalogue.subject_for(HostKeysSet, cluster_id=cluster_id)
        self.resync_s = resync_s
        self.applied = 0

    def _apply(self, data: bytes) -> None:
        try:
            keys_set = _decoder.decode(data)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            self.log.error("ignoring a host key set that does not decode: %s", exc)
            return
        try:
            if apply(self.path, keys_set):
                self.applied += 1
                self.log.info(
                    "authorized_keys now holds %d managed keys (revision %d)", len(keys_set.keys), keys_set.revision
                )
        except OSError as exc:
            self.log.error("cannot write %s: %s", self.path, exc)

    async def sync_last(self) -> None:
        try:
            last = await self.js.get_last_msg(FLEET_EVENTS.name, self.subject)
        except nats.js.errors.NotFoundError:
            return
        except (nats.errors.Error, TimeoutError) as exc:
            self.log.warning("cannot read the published host keys yet: %s", exc)
            return
        if last.data:
            self._apply(last.data)

    async def run(self) -> None:
        async def on_message(msg: Msg) -> None:
            self._apply(msg.data)

        sub = await self.nc.subscribe(self.subject, cb=on_message)
        try:
            while True:
                await self.sync_last()  # at start, then now and then in case a live message was missed
                await asyncio.sleep(self.resync_s)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
