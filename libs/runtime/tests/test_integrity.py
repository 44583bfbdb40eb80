"""State at rest: a damaged SQLite file is refused at open, naming the file and the way back; files are private."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from flotilla_runtime.integrity import EXIT_REFUSED, StateRefused, private_tree
from flotilla_runtime.migrations import Migration
from flotilla_runtime.store import Store

MIGRATIONS = [Migration("svc", 1, "things", "CREATE TABLE things (id TEXT PRIMARY KEY, n INTEGER NOT NULL)")]
PAGE = 4096


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """The usual 022: what a process creates is readable by everyone unless it says otherwise."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def damaged_database(path: Path) -> None:
    """A real SQLite file of many pages, then one page in the middle overwritten with garbage."""
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA page_size={PAGE}")
        conn.execute("CREATE TABLE things (id TEXT PRIMARY KEY, n INTEGER NOT NULL)")
        conn.executemany("INSERT INTO things VALUES (?, ?)", [(f"thing-{i:06d}", i) for i in range(20_000)])
    conn.close()
    pages = path.stat().st_size // PAGE
    assert pages > 50
    with open(path, "r+b") as out:
        out.seek(PAGE * (pages // 2))
        out.write(bytes([0xA5]) * PAGE)


async def test_a_damaged_page_is_refused_naming_the_file_and_the_way_back(tmp_path: Path) -> None:
    path = tmp_path / "heartbeat.db"
    damaged_database(path)
    with pytest.raises(StateRefused) as refused:
        await Store.open(path, service="heartbeat")
    text = str(refused.value)
    assert str(path.resolve()) in text
    assert "is damaged (" in text and "refusing to start" in text
    assert f"mv {path.resolve()} {path.resolve()}.damaged" in text and "FLEET_EVENTS" in text


async def test_primary_state_is_restored_from_a_backup(tmp_path: Path) -> None:
    path = tmp_path / "upgrade-orchestrator.db"
    damaged_database(path)
    with pytest.raises(StateRefused, match=r"restore .*upgrade-orchestrator\.db from a backup"):
        await Store.open(path, service="upgrade-orchestrator")


async def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "scheduler.db"
    path.write_bytes(b"this is not SQLite" * 500)
    with pytest.raises(StateRefused, match=r"scheduler.db is damaged \(file is not a database\)"):
        await Store.open(path, service="scheduler")


async def test_a_sound_database_opens_and_keeps_its_rows(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s.db", MIGRATIONS)
    await store.run(lambda tx: tx.execute("INSERT INTO things VALUES ('a', 1)"))
    await store.close()
    store = await Store.open(tmp_path / "s.db", MIGRATIONS)
    try:
        assert [tuple(row) for row in await store.fetchall("SELECT * FROM things")] == [("a", 1)]
    finally:
        await store.close()


def test_a_service_with_a_damaged_file_exits_with_one_line_naming_it(tmp_path: Path) -> None:
    """The real entry point: it refuses before it ever reaches the bus (none is running here)."""
    damaged_database(tmp_path / "heartbeat.db")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOTILLA_")}
    env |= {
        "FLOTILLA_HEARTBEAT_STATE_DIR": str(tmp_path),
        "FLOTILLA_HEARTBEAT_NATS_URL": "nats://127.0.0.1:1",
        "FLOTILLA_HEARTBEAT_HTTP_PORT": "0",
        "FLOTILLA_HEARTBEAT_LOG_FORMAT": "text",
    }
    done = subprocess.run(
        [sys.executable, "-m", "flotilla_heartbeat"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == EXIT_REFUSED, done.stderr
    lines = [line for line in (done.stdout + done.stderr).splitlines() if "heartbeat.db" in line]
    assert len(lines) == 1, done.stdout + done.stderr
    assert "damaged" in lines[0] and "FLEET_EVENTS" in lines[0]
    assert "Traceback" not in done.stderr


@pytest.mark.usefixtures("loose_umask")
async def test_a_new_database_and_its_wal_are_private(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "svc" / "s.db", MIGRATIONS)
    try:
        await store.run(lambda tx: tx.execute("INSERT INTO things VALUES ('a', 1)"))
        files = sorted((tmp_path / "svc").iterdir())
        assert {f.name for f in files} >= {"s.db", "s.db-wal", "s.db-shm"}
        assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}
        assert mode(tmp_path / "svc") == 0o700
    finally:
        await store.close()


@pytest.mark.usefixtures("loose_umask")
async def test_files_an_older_version_left_readable_are_made_private_at_open(tmp_path: Path) -> None:
    folder = tmp_path / "svc"
    folder.mkdir(mode=0o755)
    for name in ("s.db", "s.db-wal"):
        (folder / name).touch(mode=0o644)
    os.chmod(folder, 0o755)
    store = await Store.open(folder / "s.db", MIGRATIONS)
    await store.close()
    assert mode(folder) == 0o700
    assert all(mode(f) == 0o600 for f in folder.iterdir()), {f.name: oct(mode(f)) for f in folder.iterdir()}


def test_private_tree_takes_group_and_other_bits_off_everything(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    os.chmod(tmp_path / "a", 0o755)
    os.chmod(tmp_path / "a" / "b", 0o775)
    (tmp_path / "a" / "b" / "secret.conf").write_text("password")
    os.chmod(tmp_path / "a" / "b" / "secret.conf", 0o644)
    (tmp_path / "a" / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(tmp_path / "a" / "run.sh", 0o755)
    assert private_tree(tmp_path / "a") == 4
    assert mode(tmp_path / "a") == 0o700 and mode(tmp_path / "a" / "b") == 0o700
    assert mode(tmp_path / "a" / "b" / "secret.conf") == 0o600
    assert mode(tmp_path / "a" / "run.sh") == 0o700
    assert private_tree(tmp_path / "a") == 0
