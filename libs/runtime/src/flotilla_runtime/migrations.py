"""Numbered SQL migrations, read from a package's `migrations/` folder and applied once each."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

_NAME_RE = re.compile(r"^(?P<number>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    track: str  # "runtime" for the runtime's own tables, the service name for the service's
    number: int
    name: str
    sql: str


def load_migrations(package: str, track: str) -> list[Migration]:
    """Every `NNNN_name.sql` in `<package>/migrations`, in number order; gaps and duplicates are errors."""
    folder = resources.files(package).joinpath("migrations")
    found: list[Migration] = []
    for entry in folder.iterdir():
        match = _NAME_RE.match(entry.name)
        if match:
            found.append(Migration(track, int(match["number"]), match["name"], entry.read_text()))
        elif entry.name.endswith(".sql"):
            raise ValueError(f"migration {package}/migrations/{entry.name} must be named NNNN_lower_name.sql")
    found.sort(key=lambda m: m.number)
    for expected, migration in enumerate(found, start=1):
        if migration.number != expected:
            raise ValueError(f"migrations of {package} must be numbered 0001, 0002, ... without gaps or repeats")
    return found


RUNTIME_MIGRATIONS: list[Migration] = [
    Migration(
        "runtime",
        1,
        "outbox_and_inbox",
        """
        CREATE TABLE outbox (
            seq        INTEGER PRIMARY KEY AUTOINCREMENT,
            msg_id     TEXT NOT NULL UNIQUE,
            subject    TEXT NOT NULL,
            headers    BLOB NOT NULL,
            payload    BLOB NOT NULL,
            created_at REAL NOT NULL
        );
        CREATE TABLE processed_messages (
            msg_id       TEXT PRIMARY KEY,
            processed_at REAL NOT NULL
        );
        CREATE INDEX processed_messages_at ON processed_messages(processed_at);
        """,
    ),
]
