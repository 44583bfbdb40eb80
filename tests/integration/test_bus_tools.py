"""`flotilla publish` and `flotilla events` against a real local fleet and a real FLEET_EVENTS stream."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from nats.aio.client import Client

from flotilla_client import jaeger, runfile
from flotilla_client.natsserver import free_port
from flotilla_contracts.subjects import Service
from flotilla_runtime import logins
from flotilla_testkit import eventually

pytestmark = pytest.mark.integration

FLOTILLA = str(Path(sys.executable).parent / "flotilla")
OLD = [("c1", "approved"), ("c2", "approved"), ("c1", "deregistered")]


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("FLOTILLA_")}


def flotilla(state: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FLOTILLA, "--state-dir", str(state), *args], capture_output=True, text=True, timeout=timeout, env=clean_env()
    )


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """One local fleet for the module; `events` tests see the three OLD events and whatever they add."""
    state = tmp_path_factory.mktemp("bus") / "state"
    port = free_port()
    try:
        up = flotilla(state, "up", "--port", str(port), "--monitor-port", "0", timeout=60)
        assert up.returncode == 0, f"flotilla up failed:\n{up.stdout}\n{up.stderr}"
        yield state, runfile.server_url(state) or ""  # the admin URL, with its credentials
    finally:
        down = flotilla(state, "down", "--timeout", "5")
        assert down.returncode == 0, down.stderr


@pytest.fixture
async def nc(fleet: tuple[Path, str]) -> AsyncIterator[Client]:
    client = await logins.connect(fleet[1])
    try:
        yield client
    finally:
        await client.close()


async def publish_event(nc: Client, cluster: str, name: str, n: int) -> None:
    headers = {"Flotilla-Schema": "registration.ClusterApproved/v1", "Nats-Msg-Id": f"evt-{cluster}-{name}-{n}"}
    body = json.dumps({"cluster": cluster, "n": n}).encode()
    await nc.jetstream().publish(f"fleet.v1.evt.cluster.{cluster}.{name}", body, headers=headers)


@pytest.fixture(scope="module")
def old_events(fleet: tuple[Path, str]) -> float:
    """Publish OLD once (the services created FLEET_EVENTS at start); returns the time just after."""

    async def publish_all() -> None:
        client = await logins.connect(fleet[1])
        try:
            for n, (cluster, name) in enumerate(OLD):
                await publish_event(client, cluster, name, n)
        finally:
            await client.close()

    asyncio.run(publish_all())
    return time.time()


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_request_prints_the_reply_with_the_service_name(fleet: tuple[Path, str]) -> None:
    result = flotilla(fleet[0], "publish", "fleet.v1.cmd.registration.info", "{}", "--request")
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply["ok"] is True and reply["data"]["name"] == "registration"


def nats_cli(url: str, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real `nats` CLI (natscli, built by `make peer-bins`), with no context of the user's."""
    exe = jaeger.bin_dir() / "nats"
    env = {**clean_env(), "XDG_CONFIG_HOME": str(home), "HOME": str(home)}
    return subprocess.run([str(exe), "--server", url, *args], capture_output=True, text=True, timeout=30, env=env)


def test_the_nats_cli_sends_commands_and_finds_the_five_services(fleet: tuple[Path, str], tmp_path: Path) -> None:
    """Plain NATS tools work against the fleet: a command without Flotilla headers, and service discovery."""
    asked = nats_cli(fleet[1], tmp_path, "request", "fleet.v1.cmd.registration.info", "{}", "--raw")
    assert asked.returncode == 0, asked.stderr
    reply = json.loads(asked.stdout)
    assert reply["ok"] is True and reply["data"]["name"] == "registration"
    listed = nats_cli(fleet[1], tmp_path, "micro", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    names = {service["name"] for service in json.loads(listed.stdout)}
    assert names == {service.value for service in Service}, "every service `up` started answers $SRV discovery"


def test_request_with_an_error_reply_exits_non_zero(fleet: tuple[Path, str]) -> None:
    result = flotilla(
        fleet[0], "publish", "fleet.v1.cmd.registration.info", "{}", "-r", "--schema", "service.InfoRequest/v9"
    )
    assert result.returncode == 1
    assert json.loads(result.stdout)["error"]["code"] == "unsupported_version"
    assert "unsupported_version" in result.stderr


def test_request_to_a_service_that_is_not_running_names_it(fleet: tuple[Path, str]) -> None:
    result = flotilla(fleet[0], "publish", "fleet.v1.cmd.nobody.info", "{}", "-r", "--timeout", "2")
    assert result.returncode == 1
    assert "nobody service is not running" in result.stderr


def test_malformed_json_is_refused_before_connecting(fleet: tuple[Path, str]) -> None:
    # An unreachable server: the JSON error can only come from the local check.
    result = flotilla(fleet[0], "--server", "nats://127.0.0.1:1", "publish", "fleet.v1.cmd.registration.info", '{"a":')
    assert result.returncode == 1
    assert "not valid JSON" in result.stderr and "cannot reach" not in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("subject", ["", "fleet.v1 cmd"])
def test_empty_subjects_and_subjects_with_spaces_are_refused(fleet: tuple[Path, str], subject: str) -> None:
    result = flotilla(fleet[0], "publish", subject, "{}")
    assert result.returncode == 1 and "subject" in result.stderr


async def test_publish_without_request_reaches_subscribers(fleet: tuple[Path, str], nc: Client) -> None:
    sub = await nc.subscribe("demo.bus.tools")
    await nc.flush()
    result = flotilla(fleet[0], "publish", "demo.bus.tools", '{"hello": 1}', "-H", "Origin=test")
    assert result.returncode == 0, result.stderr
    msg = await sub.next_msg(timeout=5)
    assert json.loads(msg.data) == {"hello": 1}
    assert msg.headers is not None and msg.headers["Origin"] == "test" and msg.headers["Nats-Msg-Id"]
    assert msg.headers["traceparent"].startswith("00-")


def test_events_json_replays_the_stream_and_exits_when_caught_up(fleet: tuple[Path, str], old_events: float) -> None:
    result = flotilla(fleet[0], "events", "-o", "json")
    assert result.returncode == 0, result.stderr
    events = json_lines(result.stdout)
    mine = [e for e in events if str(e["msg_id"]).startswith("evt-")][:3]
    assert [e["subject"] for e in mine] == [f"fleet.v1.evt.cluster.{c}.{n}" for c, n in OLD]
    assert all(e["schema"] == "registration.ClusterApproved/v1" for e in mine)
    assert [e["data"] for e in mine] == [{"cluster": c, "n": n} for n, (c, _) in enumerate(OLD)]
    for stream in ("FLEET_EVENTS", "FLEET_REPORTS"):  # merged by time, each in its own order
        seqs = [int(str(e["seq"])) for e in events if e["stream"] == stream]
        assert seqs == sorted(seqs)
    assert {e["stream"] for e in events} <= {"FLEET_EVENTS", "FLEET_REPORTS"}


def test_events_table_has_a_header_and_a_row_per_event(fleet: tuple[Path, str], old_events: float) -> None:
    result = flotilla(fleet[0], "events", "--subject", "cluster.>")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["SEQ", "TIME", "SUBJECT", "SCHEMA", "ACTOR", "DATA"]
    assert "fleet.v1.evt.cluster.c1.approved" in lines[1] and '{"cluster":"c1","n":0}' in lines[1]


def test_events_subject_filter(fleet: tuple[Path, str], old_events: float) -> None:
    result = flotilla(fleet[0], "events", "-o", "json", "--subject", "fleet.v1.evt.cluster.c1.>")
    subjects = {e["subject"] for e in json_lines(result.stdout)}
    assert subjects == {"fleet.v1.evt.cluster.c1.approved", "fleet.v1.evt.cluster.c1.deregistered"}
    nothing = flotilla(fleet[0], "events", "--subject", "cluster.nobody.>")
    assert nothing.returncode == 0 and nothing.stdout == "" and "no events" in nothing.stderr


async def test_events_since_leaves_out_older_events(fleet: tuple[Path, str], old_events: float, nc: Client) -> None:
    # A time between the OLD events (acknowledged before `old_events` was read) and the next one: how long the
    # CLI takes to start does not matter, unlike a duration counted back from when it runs.
    cut = datetime.fromtimestamp(old_events, UTC).isoformat()
    await publish_event(nc, "c3", "approved", 99)
    result = flotilla(fleet[0], "events", "-o", "json", "--since", cut, "--subject", "cluster.>")
    assert result.returncode == 0, result.stderr
    assert [e["subject"] for e in json_lines(result.stdout)] == ["fleet.v1.evt.cluster.c3.approved"]
    # A duration counts back from now: an hour reaches every event of this test module.
    hour = flotilla(fleet[0], "events", "-o", "json", "--since", "1h", "--subject", "cluster.>")
    assert hour.returncode == 0, hour.stderr
    subjects = [e["subject"] for e in json_lines(hour.stdout)]
    assert subjects[:4] == [*(f"fleet.v1.evt.cluster.{c}.{n}" for c, n in OLD), "fleet.v1.evt.cluster.c3.approved"]
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    none = flotilla(fleet[0], "events", "--since", later, "--subject", "cluster.>")
    assert none.returncode == 0 and none.stdout == ""
    assert f"no events matching fleet.v1.evt.cluster.> since {later}" in none.stderr


async def caught_up(nc: Client, subject: str, within_s: float = 60) -> None:
    """Until a reader of `subject` (the CLI's consumer) exists on FLEET_EVENTS with nothing left to deliver."""

    async def reader_caught_up() -> bool:
        consumers = await nc.jetstream().consumers_info("FLEET_EVENTS")
        return any(c.config.filter_subject == subject and c.num_pending == 0 for c in consumers)

    await eventually(reader_caught_up, f"a reader of {subject} caught up", timeout_s=within_s)


async def test_events_follow_prints_new_events(fleet: tuple[Path, str], old_events: float, nc: Client) -> None:
    cmd = ["--state-dir", str(fleet[0]), "events", "--follow", "-o", "json", "--subject", "cluster.c4.>"]
    proc = await asyncio.create_subprocess_exec(
        FLOTILLA, *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=clean_env()
    )
    assert proc.stdout is not None
    try:
        await caught_up(nc, "fleet.v1.evt.cluster.c4.>")  # it has read all there is: what comes next is new
        await publish_event(nc, "c4", "approved", 7)
        event = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
        assert event["subject"] == "fleet.v1.evt.cluster.c4.approved" and event["data"] == {"cluster": "c4", "n": 7}
        assert proc.returncode is None, "--follow keeps running"
    finally:
        proc.terminate()
        await proc.wait()
