"""The production bus (deploy/envs/prod with components/bus-security) proven on a real nats-server: each service's
rendered URL connects over TLS and publishes its own events, another service's commands are denied, wrong passwords
and plaintext clients are refused, and two servers route to each other over mutual TLS. Its rendered manifests:
test_bus_security_manifests.py.

The server runs the overlay's own nats.conf and the files it includes, taken from the rendered ConfigMap, with a
Secret made by `flotilla bus-config secret` in the environment (as envFrom gives it to the pods) and a test CA in
place of cert-manager's; only addresses, the pid file, the store and certificate paths are made local. Clients
connect with the URLs the rendered pods get (their `$(VAR)` expanded as Kubernetes does), pointed at that server.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import nats
import nats.errors
import pytest
from bus_security_support import (
    IN_CLUSTER,
    SECRET,
    SERVICE_USERS,
    NatsFiles,
    Render,
    Server,
    live_subscription,
    localize_nats_config,
    pod_container,
    single_server,
    speak_plaintext,
    start,
    stop,
    workloads,
)
from deploy_support import env_of
from integration_support import connect_watched

from flotilla_client import busauth
from flotilla_client.natsserver import free_port
from flotilla_contracts import permissions, subjects
from flotilla_contracts.subjects import Service
from flotilla_runtime.natsconn import CA_ENV
from flotilla_testkit import ConditionNotMet, eventually_sync


@pytest.fixture(scope="module")
def prod_files(render: Render, nats_files: NatsFiles) -> dict[str, str]:
    return nats_files(render("envs/prod"))


@pytest.fixture(scope="module")
def server(
    prod_files: dict[str, str],
    test_tls: Path,
    bus_secret: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    """One server of the prod configuration (the cluster block left out), the Secret's values in its environment."""
    with single_server(prod_files, tmp_path_factory.mktemp("nats"), test_tls, bus_secret) as running:
        yield running


@pytest.fixture
def trust_test_ca(monkeypatch: pytest.MonkeyPatch, test_tls: Path) -> None:
    monkeypatch.setenv(CA_ENV, str(test_tls / "ca.crt"))  # as the pods' FLOTILLA_NATS_CA names the mounted ca.crt


def rendered_url(render: Render, service: Service, server: Server, bus_secret: dict[str, str]) -> str:
    """The service pod's FLOTILLA_NATS_URL as the pod gets it from the Secret, pointed at the test server."""
    [workload, *_] = workloads(render("envs/prod"), service.value)
    url = env_of(pod_container(workload), {SECRET: bus_secret})["FLOTILLA_NATS_URL"]
    assert IN_CLUSTER in url and "$(" not in url, url
    return url.replace(IN_CLUSTER, f"localhost:{server.port}")


def own_event(service: Service) -> str:
    """A subject of an event the service emits (the first of its grant's `fleet.v1.evt.<entity>.>`)."""
    [first, *_] = [s for s in permissions.service_grant(service).publish if s.startswith(subjects.EVT_PREFIX)]
    return first.replace(">", "t1.happened")


@pytest.mark.integration
@pytest.mark.parametrize("service", SERVICE_USERS, ids=str)
@pytest.mark.usefixtures("trust_test_ca")
async def test_a_service_connects_over_tls_with_its_pod_url_and_publishes_its_own_events(
    render: Render, server: Server, bus_secret: dict[str, str], service: Service
) -> None:
    admin = await connect_watched(server.url(permissions.ADMIN_USER, bus_secret[busauth.password_variable("admin")]))
    peer = await connect_watched(rendered_url(render, service, server, bus_secret))
    try:
        assert peer.nc.connected_url is not None and peer.nc.connected_url.scheme == "tls"
        seen = await live_subscription(admin, f"{subjects.EVT_PREFIX}.>")
        await peer.nc.publish(own_event(service), b"{}")
        await peer.nc.flush()
        message = await seen.next_msg(timeout=3)
        assert message.subject == own_event(service)
        assert not peer.errors and not admin.errors
        connz = server.monitor("/connz?auth=true")
        assert service.value in {c.get("authorized_user") for c in connz["connections"]}
        assert {c.get("tls_version") for c in connz["connections"]} - {None, ""}, "connections are TLS"
    finally:
        await peer.nc.close()
        await admin.nc.close()


@pytest.mark.integration
@pytest.mark.usefixtures("trust_test_ca")
async def test_another_services_commands_are_denied(render: Render, server: Server, bus_secret: dict[str, str]) -> None:
    admin = await connect_watched(server.url(permissions.ADMIN_USER, bus_secret[busauth.password_variable("admin")]))
    heartbeat = await connect_watched(rendered_url(render, Service.HEARTBEAT, server, bus_secret))
    command = subjects.command(Service.REGISTRATION, "tokens.create")
    try:
        watch = await live_subscription(admin, subjects.service_commands(Service.REGISTRATION))
        await heartbeat.nc.publish(command, b"{}")
        await heartbeat.nc.subscribe(subjects.service_commands(Service.REGISTRATION))
        assert await heartbeat.denied(f'publish to "{command}"'), heartbeat.errors
        assert await heartbeat.denied("subscription to"), heartbeat.errors
        await admin.nc.flush()
        with pytest.raises(nats.errors.TimeoutError):
            await watch.next_msg(timeout=0.3)  # nothing got through
        # The control group: its own command subject is open to it.
        await heartbeat.nc.subscribe(subjects.service_commands(Service.HEARTBEAT))
        await heartbeat.nc.flush()
        assert not await heartbeat.denied(subjects.service_commands(Service.HEARTBEAT), within_s=0.3)
    finally:
        await heartbeat.nc.close()
        await admin.nc.close()


@pytest.mark.integration
@pytest.mark.usefixtures("trust_test_ca")
async def test_a_wrong_password_is_refused(server: Server, bus_secret: dict[str, str]) -> None:
    other = bus_secret[busauth.password_variable(Service.SCHEDULER.value)]
    for user, password in ((Service.HEARTBEAT.value, other), (permissions.ADMIN_USER, "not-the-password")):
        with pytest.raises(nats.errors.Error) as refused:
            await connect_watched(server.url(user, password))
        assert "authorization violation" in str(refused.value).lower(), user


@pytest.mark.integration
def test_a_client_without_tls_is_refused(server: Server, bus_secret: dict[str, str]) -> None:
    """Right user and password, in the clear: the server insists on a TLS handshake and never answers the PING."""
    password = bus_secret[busauth.password_variable(Service.HEARTBEAT.value)]
    connect_line = json.dumps({"user": "heartbeat", "pass": password, "verbose": False, "tls_required": False})
    greeting, answer = speak_plaintext(server.port, f"CONNECT {connect_line}\r\nPING\r\n".encode())
    assert json.loads(greeting.decode().removeprefix("INFO ").strip())["tls_required"] is True
    assert b"PONG" not in answer, "a plaintext client was served"


@pytest.mark.integration
def test_routes_between_servers_use_mutual_tls(
    prod_files: dict[str, str],
    test_tls: Path,
    bus_secret: dict[str, str],
    tmp_path: Path,
) -> None:
    """Two servers of the prod configuration, the cluster block kept (routes to each other on localhost): the
    routes form through cluster-tls.conf (both present the test certificate and verify the other's), and a
    plaintext peer on the route port is never answered."""
    ports = [(free_port(), free_port(), free_port()) for _ in range(2)]
    cluster_ports = tuple(p[2] for p in ports)
    servers: list[Server] = []
    try:
        for i, (port, monitor_port, cluster_port) in enumerate(ports):
            conf = localize_nats_config(
                prod_files,
                tmp_path / f"nats-{i}",
                test_tls,
                port=port,
                monitor_port=monitor_port,
                cluster_port=cluster_port,
                routes=cluster_ports,
            )
            servers.append(start(conf, {"POD_NAME": f"nats-{i}", **bus_secret}, port, monitor_port, cluster_port))
        with contextlib.suppress(ConditionNotMet):  # the assert below shows the log
            eventually_sync(
                lambda: all(s.monitor("/routez")["num_routes"] for s in servers), "routes", timeout_s=10, every_s=0.1
            )
        assert all(s.monitor("/routez")["num_routes"] for s in servers), servers[0].log.read_text()[-2000:]
        # A route port with TLS greets in TLS (no plaintext INFO): plaintext words get no plaintext answer.
        _, answer = speak_plaintext(servers[0].cluster_port, b'CONNECT {"verbose":false}\r\nPING\r\n', greeted=False)
        assert b"PONG" not in answer and b"INFO" not in answer, "a plaintext route peer was served"
    finally:
        for running in servers:
            stop(running)
