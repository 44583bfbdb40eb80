"""What a big local fleet needs of the machine: the open-files limit, nats-server's max_connections, and sims
spread over loopback addresses (docs/scale.md, connections)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click
import nats
import pytest
from click.testing import CliRunner

from flotilla_client import localfleet, runfile
from flotilla_client.cli import sim as sim_cli
from flotilla_client.cli.main import cli
from flotilla_client.errors import ClientError
from flotilla_client.natsserver import ANY_ADDRESS, NatsServer, free_port
from flotilla_client.runfile import NatsEntry, RunInfo
from flotilla_contracts.errors import ErrorCode
from flotilla_runtime import logins


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server listening on every address, taking at most two connections."""
    started = NatsServer(
        state_dir=tmp_path / "nats", port=free_port(), host=ANY_ADDRESS, max_connections=2, log_file=tmp_path / "log"
    )
    started.start()
    try:
        yield started
    finally:
        started.stop()


async def test_a_server_on_every_address_takes_other_loopback_addresses_up_to_its_max_connections(
    server: NatsServer,
) -> None:
    assert server.url == f"nats://127.0.0.1:{server.port}"  # what local clients are given
    first = await logins.connect(server.url, allow_reconnect=False)
    other = await logins.connect(f"nats://127.0.0.2:{server.port}", allow_reconnect=False)
    try:
        with pytest.raises((ConnectionError, nats.errors.Error)):  # the server answers -ERR and hangs up
            await logins.connect(f"nats://127.0.0.3:{server.port}", allow_reconnect=False, max_reconnect_attempts=0)
        assert server.log_file is not None
        assert "maximum connections exceeded" in server.log_file.read_text()
    finally:
        await first.close()
        await other.close()


def test_a_sims_url_moves_to_its_bus_address_keeping_credentials_and_port() -> None:
    url = "nats://admin:s3cret@127.0.0.1:4300"
    assert localfleet.at_address(url, "127.0.0.7") == "nats://admin:s3cret@127.0.0.7:4300"
    assert localfleet.at_address("nats://127.0.0.1:4300", "127.0.0.2") == "nats://127.0.0.2:4300"


def test_sim_refuses_a_bus_address_nats_server_does_not_listen_on(tmp_path: Path) -> None:
    port = free_port()  # nobody listens there
    entry = NatsEntry(url=f"nats://admin:pw@127.0.0.1:{port}", pid=0, port=port)
    runfile.save(tmp_path, RunInfo(state_dir=str(tmp_path), started_at="2026-01-01T00:00:00Z", nats=entry))
    args = ["--state-dir", str(tmp_path), "sim", "--clusters", "2", "--token", "t", "--bus-address", "127.0.0.5"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert f"nats-server does not listen on 127.0.0.5:{port}" in result.stderr
    assert "flotilla up --host 0.0.0.0" in result.stderr
    assert not (tmp_path / "sim-sim").exists()  # nothing started


_LIMITS = """
import json, resource, sys
from flotilla_client.openfiles import raise_open_files
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
raised = raise_open_files(int(sys.argv[1]))
now = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
print(json.dumps({"hard": hard, "soft": raised.soft, "enough": raised.enough, "now": now}))
"""


def _raise(wanted: int) -> dict[str, int]:
    done = subprocess.run([sys.executable, "-c", _LIMITS, str(wanted)], capture_output=True, text=True, check=True)
    loaded: dict[str, int] = json.loads(done.stdout)
    return loaded


def test_the_open_files_limit_goes_up_to_what_is_wanted_and_never_down() -> None:
    small = _raise(300)
    assert small["now"] == small["soft"] == 300 and small["enough"]
    assert _raise(100)["now"] == 256  # never lowered
    beyond = _raise(10**9)  # past any hard limit: as far as allowed, and says it is not enough
    assert beyond["now"] == beyond["soft"] >= beyond["hard"] and not beyond["enough"]


class Clock:
    """`time` for the wait: each pause moves it on by its length, at once."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _approved(*names: str) -> list[Any]:
    """Approved clusters as `clusters.list` gives them, as far as the wait reads them (their names)."""
    return [SimpleNamespace(identity=SimpleNamespace(name=name)) for name in names]


def test_waiting_for_the_joins_asks_again_when_a_busy_registration_answers_late(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A fleet joining at once keeps registration busy: one late `clusters.list` is not the joins failing.
    late = ClientError(ErrorCode.TIMEOUT, "no reply on fleet.v1.cmd.registration.clusters.list within 10s")
    answers: list[Exception | list[Any]] = [
        late,
        _approved("big-0000"),
        late,
        _approved("big-0000", "big-0001"),
    ]

    clock = Clock()

    def list_clusters(*_: object) -> list[Any]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            clock.sleep(10)  # a request that times out took its 10 s
            raise answer
        return answer

    monkeypatch.setattr(sim_cli, "list_all_clusters", list_clusters)
    monkeypatch.setattr("flotilla_client.cli.sim.time", clock)  # the poll's pause, not what is tested
    assert sim_cli.wait_for_clusters(None, "big", 2, 60.0) == 2  # type: ignore[arg-type]
    out = capsys.readouterr().out
    assert out.count("registration did not answer in time") == 2 and "2/2 clusters joined" in out


def test_waiting_for_the_joins_asks_again_when_the_bus_refused_its_connection(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A busy nats-server (a big fleet connecting) may not take the CLI's own connection in time: not a failure.
    refused = ClientError(ErrorCode.UNAVAILABLE, "not connected to NATS at nats://127.0.0.1:4222")
    answers: list[Exception | list[Any]] = [refused, _approved("big-0000", "big-0001")]

    def list_clusters(*_: object) -> list[Any]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(sim_cli, "list_all_clusters", list_clusters)
    monkeypatch.setattr("flotilla_client.cli.sim.time", Clock())
    assert sim_cli.wait_for_clusters(None, "big", 2, 60.0) == 2  # type: ignore[arg-type]
    out = capsys.readouterr().out
    assert "could not reach the bus" in out and "2/2 clusters joined" in out


def test_waiting_for_the_joins_gives_up_at_its_timeout_saying_how_far_it_got(monkeypatch: pytest.MonkeyPatch) -> None:
    late = ClientError(ErrorCode.TIMEOUT, "no reply within 10s")
    answers: list[Exception | list[Any]] = [_approved("big-0000"), late]

    clock = Clock()

    def list_clusters(*_: object) -> list[Any]:
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, Exception):
            clock.sleep(10)  # a request that times out took its 10 s
            raise answer
        return answer

    monkeypatch.setattr(sim_cli, "list_all_clusters", list_clusters)
    monkeypatch.setattr("flotilla_client.cli.sim.time", clock)
    with pytest.raises(
        click.ClickException, match=r"registration did not answer within 30s .*1 of 2 clusters had joined"
    ):
        sim_cli.wait_for_clusters(None, "big", 2, 30.0)  # type: ignore[arg-type]
