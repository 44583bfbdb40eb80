"""Every service, as its own process: answers $SRV.PING and `info`, and survives each kind of bad input."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client

from flotilla_client.natsserver import NatsServer, free_port
from flotilla_contracts import catalogue
from flotilla_contracts.subjects import Service, command
from flotilla_testkit import ConditionNotMet, eventually

pytestmark = pytest.mark.integration


async def wait_for_services(nc: Client, count: int, within_s: float = 20.0) -> list[dict[str, object]]:
    """The services answering a `$SRV.PING` once `count` answer, or the last answers seen after `within_s` (the
    caller asserts on them)."""

    async def pinged() -> list[dict[str, object]]:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        await nc.publish("$SRV.PING", b"", reply=inbox)
        replies = []
        try:
            while True:
                msg = await sub.next_msg(0.3)
                if msg.data:  # skip the server's "no responders" status while nothing is subscribed yet
                    replies.append(msgspec.json.decode(msg.data))
        except TimeoutError:
            pass
        await sub.unsubscribe()
        return replies

    try:
        return await eventually(
            pinged, f"{count} services answering", timeout_s=within_s, every_s=0.2, until=lambda r: len(r) >= count
        )
    except ConditionNotMet as short:
        return list(short.last) if isinstance(short.last, list) else []


BAD_INPUTS = [
    ("malformed JSON", b'{"x": ', {}, "malformed"),
    ("JSON that is not an object", b'"hello"', {}, "malformed"),
    ("another message's schema", b"{}", {"Flotilla-Schema": "registration.JoinRequest/v1"}, "wrong_schema"),
    ("an unknown schema version", b"{}", {"Flotilla-Schema": "service.InfoRequest/v2"}, "unsupported_version"),
    ("an oversized message", b'{"pad": "' + b"x" * 400_000 + b'"}', {}, "too_large"),
]


async def test_five_services_answer_discovery_and_bad_input(
    five_services: dict[Service, subprocess.Popen[bytes]], nc: Client
) -> None:
    found = await wait_for_services(nc, 5)
    assert sorted(str(reply["name"]) for reply in found) == sorted(s.value for s in Service)
    for service in Service:
        subject = command(service, "info")
        for label, body, headers, code in BAD_INPUTS:
            reply = msgspec.json.decode((await nc.request(subject, body, headers=headers, timeout=3)).data)
            assert reply["ok"] is False, f"{service}: {label}"
            assert reply["error"]["code"] == code, f"{service}: {label}"
            assert reply["error"]["message"], f"{service}: {label}"
            good = msgspec.json.decode((await nc.request(subject, b"{}", timeout=3)).data)
            assert good["ok"] is True and good["data"]["name"] == service.value, f"{service} after {label}"
    for service, proc in five_services.items():
        assert proc.poll() is None, f"{service} died"


DEEP = b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


def command_subjects() -> list[str]:
    """Every command subject of the catalogue, `info` once per service."""
    found: list[str] = []
    for op in catalogue.OPERATIONS:
        if op.kind is catalogue.Kind.COMMAND:
            found += (
                [op.subject.format(service=s.value) for s in Service] if "{service}" in op.subject else [op.subject]
            )
    return found


async def test_json_nested_100k_deep_is_malformed_on_every_command_and_out_of_range_numbers_are_invalid_field(
    five_services: dict[Service, subprocess.Popen[bytes]], nc: Client
) -> None:
    await wait_for_services(nc, 5)
    subjects = command_subjects()
    assert len(subjects) >= 39
    for subject in subjects:
        reply = msgspec.json.decode((await nc.request(subject, DEEP, timeout=5)).data)
        assert reply["ok"] is False and reply["error"]["code"] == "malformed", (subject, reply)
        assert "nested deeper than 128 levels" in reply["error"]["message"], subject
    ttl = msgspec.json.decode(
        (await nc.request(command(Service.REGISTRATION, "tokens.create"), b'{"ttl_s": 1e12}')).data
    )
    assert (ttl["error"]["code"], ttl["error"]["details"]["field"]) == ("invalid_field", "ttl_s"), ttl
    assert "at most 315360000 seconds" in ttl["error"]["message"]
    for service, proc in five_services.items():
        assert proc.poll() is None, f"{service} died"


def start_on_tiny_volume(nats_url: str, state: Path, log: Path) -> subprocess.Popen[bytes]:
    """Registration with its state folder on a 4 MiB tmpfs of its own (a user and mount namespace: no root)."""
    env = {
        **os.environ,
        "FLOTILLA_REGISTRATION_NATS_URL": nats_url,
        "FLOTILLA_REGISTRATION_STATE_DIR": str(state),
        "FLOTILLA_REGISTRATION_HTTP_PORT": str(free_port()),
        "FLOTILLA_REGISTRATION_LOG_FORMAT": "json",
        "PYTHONUNBUFFERED": "1",
    }
    script = 'mount -t tmpfs -o size=4m tmpfs "$0" && exec "$@"'
    argv = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, str(state)]
    with log.open("wb") as out:
        return subprocess.Popen([*argv, sys.executable, "-m", "flotilla_registration"], env=env, stdout=out, stderr=out)


def tiny_volumes_work(tmp_path: Path) -> bool:
    probe = tmp_path / "probe"
    probe.mkdir()
    script = 'mount -t tmpfs -o size=1m tmpfs "$0"'
    if shutil.which("unshare") is None:
        return False
    done = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, str(probe)], check=False
    )
    return done.returncode == 0


def fill(folder: Path) -> Path:
    """Write a file in `folder` until the volume has no room left."""
    filler = folder / "filler"
    with filler.open("wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


async def test_a_full_disk_answers_unavailable_disk_full_and_recovers_once_there_is_room(
    nats_server: NatsServer, nc: Client, tmp_path: Path
) -> None:
    """A real full volume (a tmpfs in a mount namespace), not an injected error; the store-level injection
    (SQLITE_FULL through max_page_count) is in libs/runtime/tests/test_diskfull.py."""
    if not tiny_volumes_work(tmp_path):
        pytest.skip("this machine cannot mount a tmpfs in a user namespace (unshare); disk full is covered by "
                    "libs/runtime/tests/test_diskfull.py")  # fmt: skip
    state = tmp_path / "registration"
    state.mkdir()
    proc = start_on_tiny_volume(nats_server.url, state, tmp_path / "registration.log")
    try:
        assert await wait_for_services(nc, 1), (tmp_path / "registration.log").read_text()[-2000:]
        create = command(Service.REGISTRATION, "tokens.create")
        assert msgspec.json.decode((await nc.request(create, b"{}", timeout=5)).data)["ok"] is True
        inside = Path(f"/proc/{proc.pid}/root") / state.relative_to("/")  # the volume as the service sees it
        filler = fill(inside)
        # One request may still fit in pages SQLite already holds; the volume is full by the next few.
        replies = [msgspec.json.decode((await nc.request(create, b"{}", timeout=10)).data) for _ in range(5)]
        refused = [r for r in replies if not r["ok"]]
        assert refused, replies
        for reply in refused:
            error = reply["error"]
            assert (error["code"], error["retryable"]) == ("unavailable", True), error
            assert error["message"].startswith("disk full: the state database "), error
            assert "nothing was changed" in error["message"] and "Free space" in error["message"]
        filler.unlink()
        again = msgspec.json.decode((await nc.request(create, b"{}", timeout=10)).data)
        assert again["ok"] is True, again
        assert proc.poll() is None, "registration died on a full disk"
    finally:
        proc.terminate()
        proc.wait(15)
