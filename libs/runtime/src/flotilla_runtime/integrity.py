"""State at rest: files private to the process (0600, folders 0700) and a damaged SQLite file refused at start.

A service never serves from a file it cannot trust and never replaces a missing or damaged one silently: it
raises `StateRefused`, whose message names the file, what is wrong and how to restore it, and `entry.main`
turns that into one log line and a non-zero exit.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
from pathlib import Path

from flotilla_runtime.errors import FlotillaError

FILE_MODE = 0o600
FOLDER_MODE = 0o700
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")  # SQLite creates these with the main file's mode
EXIT_REFUSED = 3  # the process refuses its state: a restart alone will not help

# How each service's file comes back when it is damaged or lost (docs/operations.md says the same).
_REBUILT = (
    "move it aside (mv {path} {path}.damaged) and start the service again: it rebuilds its state from "
    "FLEET_EVENTS and from fresh heartbeats"
)
_BACKUP = (
    "it holds primary state that nothing else has: stop the service and restore {path} from a backup "
    "(see docs/operations.md); do not delete it"
)
_JOURNAL = (
    "move it aside (mv {path} {path}.damaged) only when no rollout is running on this node: the agent then "
    "joins again with its token and forgets which steps it ran; otherwise restore it from a backup"
)
RESTORE: dict[str, str] = {
    "heartbeat": _REBUILT,
    "registration": _BACKUP,
    "scheduler": _BACKUP,
    "upgrade-orchestrator": _BACKUP,
    "node-agent": _JOURNAL,
}


class StateRefused(FlotillaError):
    """A state file or key is missing, damaged or does not belong here: the process must not start."""


def restore_advice(service: str, path: str | Path) -> str:
    """What an operator does about a damaged state file of `service` (a backup when nothing rebuilds it)."""
    return RESTORE.get(service, _BACKUP).format(path=path)


def _owned(st: os.stat_result) -> bool:
    return st.st_uid == os.geteuid()


def private_folder(path: Path) -> None:
    """Create `path` (and parents) 0700; an existing folder we own loses its group and other bits."""
    path.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
    st = path.stat()
    if _owned(st) and stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, stat.S_IMODE(st.st_mode) & ~0o077)


def private_file(path: Path, *, create: bool = False) -> None:
    """Make `path` 0600-at-most (created empty with that mode when asked), so a secret is never readable by others.

    Only bits are taken away: an existing file we own keeps its owner bits and loses group and other.
    """
    if create:
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    try:
        st = path.stat()
    except FileNotFoundError:
        return
    if _owned(st) and stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, stat.S_IMODE(st.st_mode) & ~0o077)


def private_database(path: Path) -> None:
    """The folder 0700, the SQLite file created 0600 before SQLite opens it (its -wal and -shm then get the
    same mode), and files left by an older version made private too."""
    private_folder(path.parent)
    private_file(path, create=True)
    for suffix in SQLITE_COMPANIONS:
        private_file(path.with_name(path.name + suffix))


def private_tree(root: Path) -> int:
    """Take group and other bits off every folder and file under `root` that we own (an upgrade from a
    version that left them readable); returns how many were changed. Symbolic links are not followed."""
    changed = 0
    for folder, dirs, files in os.walk(root):
        for name in [".", *dirs, *files]:
            target = Path(folder) / name if name != "." else Path(folder)
            try:
                st = target.lstat()
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(st.st_mode) or not _owned(st) or not stat.S_IMODE(st.st_mode) & 0o077:
                continue
            os.chmod(target, stat.S_IMODE(st.st_mode) & ~0o077)
            changed += 1
    return changed


def check_database(conn: sqlite3.Connection, path: str | Path, advice: str) -> None:
    """SQLite's `quick_check` (every page and index entry, no cross-checks): a damaged file raises `StateRefused`."""
    try:
        rows = conn.execute("PRAGMA quick_check").fetchall()
    except sqlite3.DatabaseError as exc:
        raise StateRefused(damaged_message(path, str(exc), advice)) from None
    problems = [str(row[0]) for row in rows]
    if problems != ["ok"]:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise StateRefused(damaged_message(path, f"quick_check: {problems[0]}{more}", advice))


def damaged_message(path: str | Path, problem: str, advice: str) -> str:
    return f"the state database {path} is damaged ({problem}); refusing to start: {advice}"
