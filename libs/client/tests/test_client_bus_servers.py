"""`flotilla up --bus-servers N`: the configuration of each nats-server, the run file, a sim's choice of server."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner

from flotilla_client import localfleet, localup, runfile, supervised
from flotilla_client.cli.main import cli
from flotilla_client.errors import LocalFleetError
from flotilla_client.natsserver import ClusterMember, NatsServer, free_port, jetstream_not_ready
from flotilla_client.runfile import NatsEntry, RunInfo
from flotilla_testkit import eventually


def test_one_server_is_configured_as_before_without_a_cluster(tmp_path: Path) -> None:
    [member] = localup._cluster(tmp_path, 1)
    text = NatsServer(state_dir=tmp_path / "nats", port=4300, cluster=member).write_config().read_text()
    assert member is None
    assert "cluster" not in text
    assert "max_file_store: 10GB" in text


def test_each_server_routes_to_the_others_with_a_password_and_only_the_first_stores(tmp_path: Path) -> None:
    members = localup._cluster(tmp_path, 3)
    texts = []
    for index, member in enumerate(members, start=1):
        server = NatsServer(state_dir=localfleet.bus_server_dir(tmp_path, index), port=4300 + index, cluster=member)
        texts.append(server.write_config().read_text())
    ports = [m.route_port for m in members if isinstance(m, ClusterMember)]
    assert len(set(ports)) == 3
    for index, text in enumerate(texts):
        routes = re.findall(r"nats://route:([^@]+)@127\.0\.0\.1:(\d+)", text)
        assert sorted(int(p) for _, p in routes) == sorted(p for j, p in enumerate(ports) if j != index)
        password = re.search(r'authorization \{ user: route, password: "([^"]+)" \}', text)
        assert password is not None and {pw for pw, _ in routes} == {password.group(1)}  # the same secret
        assert f"port: {ports[index]}" in text and "no_advertise: true" in text
        assert ("max_file_store: 10GB" in text) is (index == 0), text  # streams on the first only
    assert len({re.search(r'server_name: "([^"]+)"', t).group(1) for t in texts}) == 3  # type: ignore[union-attr]


def test_a_state_folder_keeps_the_jetstream_layout_it_was_made_with(tmp_path: Path) -> None:
    (tmp_path / "nats" / "jetstream").mkdir(parents=True)  # JetStream data of one standalone server
    with pytest.raises(LocalFleetError, match="made with one nats-server"):
        localup._cluster(tmp_path, 2)
    assert localup._cluster(tmp_path, 1) == [None]
    (tmp_path / "nats" / "jetstream" / "SYS" / "_js_").mkdir(parents=True)  # a cluster's meta group
    with pytest.raises(LocalFleetError, match="made with several"):
        localup._cluster(tmp_path, 1)
    assert len(localup._cluster(tmp_path, 2)) == 2


def test_the_run_file_lists_every_server_and_an_older_one_still_loads(tmp_path: Path) -> None:
    first = NatsEntry(url="nats://a@127.0.0.1:4300", pid=1, port=4300)
    second = NatsEntry(url="nats://a@127.0.0.1:4301", name="nats-server-2", pid=2, port=4301)
    runfile.save(tmp_path, RunInfo(state_dir=str(tmp_path), started_at="now", nats=first, more_nats=[second]))
    info = runfile.load(tmp_path)
    assert info is not None
    assert [(n.name, n.port) for n in runfile.bus_servers(info)] == [("nats-server", 4300), ("nats-server-2", 4301)]
    assert localfleet.process_names(info)[:2] == ["nats-server", "nats-server-2"]
    assert [t.label for t in localfleet.tracked(info)[1]] == ["nats-server", "nats-server-2"]

    old = msgspec.json.encode({"state_dir": str(tmp_path), "started_at": "x", "nats": {"url": "nats://h:1", "pid": 1}})
    runfile.run_file(tmp_path).write_bytes(old)
    info = runfile.load(tmp_path)
    assert info is not None and [n.name for n in runfile.bus_servers(info)] == ["nats-server"]


def test_external_server_and_several_servers_do_not_mix(tmp_path: Path) -> None:
    options = localup.UpOptions(state_dir=tmp_path, server="nats://127.0.0.1:4222", bus_servers=2)
    with pytest.raises(LocalFleetError, match="--bus-servers"):
        localup._prepare_nats(options, lambda _line: None)


def test_a_sim_on_a_server_the_fleet_does_not_have_is_refused_before_anything_starts(tmp_path: Path) -> None:
    first = NatsEntry(url="nats://a@127.0.0.1:4300", pid=1, port=4300)
    runfile.save(tmp_path, RunInfo(state_dir=str(tmp_path), started_at="now", nats=first))
    result = CliRunner().invoke(cli, ["--state-dir", str(tmp_path), "sim", "--bus-server", "2", "--token", "t"])
    assert result.exit_code == 2, result.output
    assert "has 1 nats-server(s)" in result.output and "--bus-servers 2" in result.output


async def test_the_services_wait_until_jetstream_of_a_bus_of_several_servers_is_ready(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The first server of a NATS cluster has no JetStream meta leader until the second joins: a service started
    then exits ("JetStream did not answer"), so the supervisor waits for /healthz first (CI saw `up --bus-servers 2`
    fail that way)."""
    members = localup._cluster(tmp_path, 2)
    servers = [
        NatsServer(
            state_dir=localfleet.bus_server_dir(tmp_path, index),
            port=free_port(),
            monitor_port=free_port(),
            cluster=member,
            log_file=tmp_path / f"nats-{index}.log",
        )
        for index, member in enumerate(members, start=1)
    ]
    entry = NatsEntry(
        url=servers[0].url, port=servers[0].port, monitor_url=f"http://127.0.0.1:{servers[0].monitor_port}"
    )
    caplog.set_level(logging.INFO, logger="flotilla.supervisor")
    servers[0].start()
    try:
        assert jetstream_not_ready(entry.monitor_url) == "JetStream is still recovering meta layer"
        waiting = asyncio.create_task(supervised.until_jetstream_ready(entry, asyncio.Event()))
        await eventually(lambda: "waiting for JetStream on nats-server" in caplog.text, "the supervisor saying why")
        assert not waiting.done()
        servers[1].start()
        await asyncio.wait_for(waiting, 60)
        assert jetstream_not_ready(entry.monitor_url) is None
    finally:
        for server in servers:
            server.stop()
    assert "refused" in str(jetstream_not_ready(entry.monitor_url))  # no server: says why
