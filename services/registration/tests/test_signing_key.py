"""The credential signing key is its own file, and registration never mints a new one for a fleet that has members.

The rule (`decide`) is tested as a table; the real service process is tested against a real nats-server: it
refuses to start (one line, exit 3) with the key lost while FLEET_EVENTS has cluster events, and starts on a
new fleet with a key file only its owner can read.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from flotilla_client.natsserver import NatsServer
from flotilla_contracts.subjects import Entity, Service, command, event
from flotilla_registration import signingkey
from flotilla_registration.signingkey import Action, Facts, decide, fingerprint
from flotilla_runtime.bus import ensure_streams
from flotilla_runtime.integrity import EXIT_REFUSED, StateRefused
from flotilla_runtime.logs import get_logger
from flotilla_runtime.migrations import load_migrations
from flotilla_runtime.store import Store
from flotilla_testkit import eventually

KEY, OTHER = b"k" * 32, b"o" * 32
PATH, DB = Path("/state/signing.key"), "/state/registration.db"
LOG = get_logger("test")


def facts(
    file_key: bytes | None = None, legacy: bytes | None = None, recorded: bytes | None = None, clusters: int = 0
) -> Facts:
    return Facts(file_key, legacy, fingerprint(recorded) if recorded else None, clusters)


@pytest.mark.parametrize(
    ("case", "members", "action", "says"),
    [
        (facts(file_key=KEY, recorded=KEY, clusters=3), None, Action.USE, ""),
        (facts(legacy=KEY, clusters=3), None, Action.MIGRATE, ""),
        (facts(file_key=KEY, legacy=KEY, clusters=3), None, Action.USE, ""),  # a crash right after writing the file
        (facts(), None, Action.ASK_FLEET, ""),
        (facts(), False, Action.MINT, ""),
        (facts(), True, Action.REFUSE, "signing.key is missing and /state/registration.db has no clusters"),
        (facts(recorded=KEY, clusters=3), None, Action.REFUSE, "signing.key is missing while"),
        (facts(clusters=3), None, Action.REFUSE, "a new key would lock every cluster out"),
        (facts(file_key=OTHER, recorded=KEY, clusters=3), None, Action.REFUSE, "signing.key is not the key of"),
        (
            facts(file_key=OTHER, legacy=KEY, clusters=3),
            None,
            Action.REFUSE,
            "no credential of its clusters would verify",
        ),
        (facts(file_key=KEY), None, Action.ASK_FLEET, ""),
        (facts(file_key=KEY), True, Action.REFUSE, "registration.db has no clusters but FLEET_EVENTS has cluster"),
        (facts(file_key=KEY), False, Action.USE, ""),  # a crash between minting the key and recording it
        (facts(file_key=KEY, clusters=2), None, Action.REFUSE, "has 2 clusters but no record of"),
    ],
)
def test_the_key_rule(case: Facts, members: bool | None, action: Action, says: str) -> None:
    decision = decide(case, PATH, DB, members)
    assert decision.action is action
    assert says in decision.reason
    if action is Action.REFUSE:
        assert "from the same backup" in decision.reason


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(tmp_path / "registration.db", load_migrations("flotilla_registration", "registration"))
    try:
        yield opened
    finally:
        await opened.close()


async def never_asked() -> bool:
    raise AssertionError("the bus is asked only when a key would be minted")


async def test_an_older_database_key_moves_to_its_own_private_file_once(store: Store, tmp_path: Path) -> None:
    await store.run(lambda tx: tx.execute("INSERT INTO secrets VALUES ('credential_key', ?)", (KEY,)))
    assert await signingkey.load(store, "", never_asked, LOG) == KEY
    key_file = tmp_path / "signing.key"
    assert key_file.read_text().strip() == KEY.hex()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    names = await store.fetchall("SELECT name FROM secrets")
    assert [row["name"] for row in names] == ["credential_key_fingerprint"]  # the key itself left the database
    assert await signingkey.load(store, "", never_asked, LOG) == KEY  # from now on the file is authoritative


async def test_a_key_file_of_another_database_is_refused(store: Store, tmp_path: Path) -> None:
    await store.run(lambda tx: tx.execute("INSERT INTO secrets VALUES ('credential_key', ?)", (KEY,)))
    await signingkey.load(store, "", never_asked, LOG)
    (tmp_path / "signing.key").write_text(OTHER.hex())
    with pytest.raises(StateRefused, match=r"signing\.key is not the key of .*registration\.db"):
        await signingkey.load(store, "", never_asked, LOG)


async def cluster_event(nc: Client) -> None:
    js = nc.jetstream()
    await ensure_streams(js)
    await js.publish(event(Entity.CLUSTER, ("c1",), "approved"), b"{}")


async def test_the_bus_says_whether_the_fleet_has_members(nats_server: NatsServer, nc: Client) -> None:
    assert await signingkey.fleet_has_members(nats_server.url, LOG) is False  # no stream at all
    js = nc.jetstream()
    await ensure_streams(js)
    await js.publish(event(Entity.NODE, ("c1", "n1"), "reported"), b"{}")
    assert await signingkey.fleet_has_members(nats_server.url, LOG) is False  # no cluster event
    await cluster_event(nc)
    assert await signingkey.fleet_has_members(nats_server.url, LOG) is True


def start_registration(state: Path, server: NatsServer) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOTILLA_")}
    env |= {
        "FLOTILLA_REGISTRATION_STATE_DIR": str(state),
        "FLOTILLA_REGISTRATION_NATS_URL": server.url,
        "FLOTILLA_REGISTRATION_HTTP_PORT": "0",
        "FLOTILLA_REGISTRATION_LOG_FORMAT": "text",
    }
    command = [sys.executable, "-m", "flotilla_registration"]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


async def test_registration_refuses_to_start_with_its_key_lost_while_the_fleet_has_members(
    nats_server: NatsServer, nc: Client, tmp_path: Path
) -> None:
    await cluster_event(nc)
    process = start_registration(tmp_path / "registration", nats_server)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == EXIT_REFUSED, output
    refusal = [line for line in output.splitlines() if "refusing to start" in line]
    assert len(refusal) == 1, output
    assert str(tmp_path / "registration" / "signing.key") in refusal[0]
    assert "FLEET_EVENTS has cluster events" in refusal[0] and "from the same backup" in refusal[0]
    assert not (tmp_path / "registration" / "signing.key").exists()
    assert "Traceback" not in output


async def test_registration_starts_on_a_new_fleet_with_a_private_key_file(
    nats_server: NatsServer, nc: Client, tmp_path: Path
) -> None:
    process = start_registration(tmp_path / "registration", nats_server)
    try:

        async def answers() -> bool:  # the condition: it answers its `info` command
            assert process.poll() is None, process.communicate()[0]
            try:
                reply = await nc.request(command(Service.REGISTRATION, "info"), b"{}", timeout=1)
            except TimeoutError:
                return False
            except Exception as exc:  # no responders yet
                if "no responders" not in str(exc).lower():
                    raise
                return False
            return b'"name":"registration"' in reply.data

        await eventually(answers, "registration to answer its info command", timeout_s=60)
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    key_file = tmp_path / "registration" / "signing.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600, output
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    assert len(bytes.fromhex(key_file.read_text().strip())) == 32
