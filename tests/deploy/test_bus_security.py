"""The production bus (deploy/envs/prod with components/bus-security): authentication and TLS, checked on the
rendered manifests and proven on a real nats-server.

The live tests run the overlay's own nats.conf and the files it includes, taken from the rendered ConfigMap, with a
Secret made by `flotilla bus-config secret` in the environment (as envFrom gives it to the pods) and a test CA in
place of cert-manager's; only addresses, the pid file, the store and certificate paths are made local. Clients
connect with the URLs the rendered pods get (their `$(VAR)` expanded as Kubernetes does), pointed at that server.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import nats
import nats.errors
import pytest
from click.testing import CliRunner
from deploy_support import env_of
from integration_support import WatchedConnection, connect_watched
from nats.aio.subscription import Subscription

from flotilla_client import busauth, peoplefile
from flotilla_client.cli.main import cli
from flotilla_client.natsserver import NatsServer, find_nats_server, free_port
from flotilla_contracts import permissions, subjects
from flotilla_contracts.subjects import Service
from flotilla_runtime.natsconn import CA_ENV, nats_user
from flotilla_testkit import ConditionNotMet, eventually_sync

ROOT = Path(__file__).resolve().parents[2]
AUTH_CONF = ROOT / "deploy" / "components" / "bus-security" / "auth.conf"
PEOPLE = AUTH_CONF.with_name("people.yaml")  # the overlay's people and roles (test_bus_people.py)
SECRET = "flotilla-bus-auth"
SERVER_TLS_SECRET = "nats-server-tls"
IN_CLUSTER = "nats.flotilla.svc:4222"
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")
# The services that connect with a user of their own; node-agent connects as its cluster (auth callout).
SERVICE_USERS = [s for s in Service if s is not Service.NODE_AGENT]
Manifest = list[dict[str, Any]]
Render = Callable[[str], Manifest]
NatsFiles = Callable[[Manifest], dict[str, str]]


class Localize(Protocol):
    """The `localize` fixture (tests/deploy/conftest.py: localize_nats_config)."""

    def __call__(
        self,
        files: dict[str, str],
        folder: Path,
        tls: Path,
        *,
        port: int,
        monitor_port: int,
        cluster_port: int | None = None,
        routes: tuple[int, ...] = (),
    ) -> Path: ...


def workloads(objects: Manifest, name: str) -> list[dict[str, Any]]:
    found = [
        o
        for o in objects
        if o["kind"] in WORKLOADS and o["metadata"].get("labels", {}).get("app.kubernetes.io/name") == name
    ]
    assert found, f"no workload {name}"
    return found


def only(objects: Manifest, kind: str, name: str) -> dict[str, Any]:
    [found] = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def pod_container(workload: dict[str, Any]) -> dict[str, Any]:
    [c] = workload["spec"]["template"]["spec"]["containers"]
    return dict(c)


def secret_keys(c: dict[str, Any], secret: str = SECRET) -> dict[str, str]:
    """env name -> key, for every env entry of the container taken from `secret`."""
    refs = {}
    for item in c.get("env", []):
        ref = item.get("valueFrom", {}).get("secretKeyRef")
        if ref and ref["name"] == secret:
            refs[item["name"]] = ref["key"]
    return refs


def env_from_secrets(c: dict[str, Any]) -> list[str]:
    return [e["secretRef"]["name"] for e in c.get("envFrom", []) if "secretRef" in e]


def mounted_file(workload: dict[str, Any], path: str) -> tuple[str, str]:
    """(Secret name, key) of the file at `path` in the workload's container, from a Secret volume."""
    volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
    for mount in pod_container(workload).get("volumeMounts", []):
        prefix = mount["mountPath"].rstrip("/") + "/"
        if path.startswith(prefix) and "secret" in volumes[mount["name"]]:
            secret = volumes[mount["name"]]["secret"]
            file = path[len(prefix) :]
            items = {i["path"]: i["key"] for i in secret.get("items", [])} or {file: file}
            assert file in items, f"{path}: the Secret volume {mount['name']} does not project {file}"
            return secret["secretName"], items[file]
    raise AssertionError(f"{path} is not mounted from a Secret in {workload['metadata']['name']}")


def comments_only(text: str) -> bool:
    return all(not line.strip() or line.lstrip().startswith("#") for line in text.splitlines())


# --- what is committed and rendered ------------------------------------------------------------------------------


def test_committed_auth_conf_is_what_the_policy_renders() -> None:
    result = CliRunner().invoke(cli, ["bus-config", "nats-auth", "--people", str(PEOPLE)])
    assert result.exit_code == 0, result.output
    assert AUTH_CONF.read_text() == result.stdout, (
        f"{AUTH_CONF.relative_to(ROOT)} is stale (permissions, busauth or {PEOPLE.name} changed); regenerate it:\n"
        f"  .venv/bin/flotilla bus-config nats-auth --people {PEOPLE.relative_to(ROOT)} > {AUTH_CONF.relative_to(ROOT)}"
    )


def test_prod_nats_includes_the_authorization_and_tls_on_clients_and_routes(
    render: Render, nats_files: NatsFiles
) -> None:
    objects = render("envs/prod")
    files = nats_files(objects)
    assert files["auth.conf"] == AUTH_CONF.read_text()
    assert re.search(r'^include "security.conf"$', files["nats.conf"], re.M), "top level of nats.conf"
    cluster_block = files["nats.conf"].split("\ncluster {", 1)[1].split("\n}", 1)[0]
    assert 'include "cluster-tls.conf"' in cluster_block, "route TLS belongs inside the cluster block"
    security = files["security.conf"]
    assert re.search(r'^include "auth.conf"$', security, re.M)
    [nats] = [w for w in workloads(objects, "nats") if w["kind"] == "StatefulSet"]
    for name in ("security.conf", "cluster-tls.conf"):
        tls = re.search(r"^tls \{(.*?)^\}", files[name], re.M | re.S)
        assert tls, f"{name} has no tls block"
        paths = dict(re.findall(r'^\s*(cert_file|key_file|ca_file): "([^"]+)"', tls.group(1), re.M))
        assert set(paths) == {"cert_file", "key_file", "ca_file"}, name
        for setting, key in (("cert_file", "tls.crt"), ("key_file", "tls.key"), ("ca_file", "ca.crt")):
            assert mounted_file(nats, paths[setting]) == (SERVER_TLS_SECRET, key), f"{name} {setting}"
    assert re.search(r"^no_advertise: true$", files["cluster-tls.conf"], re.M), "pod IPs are not in the certificate"
    ports = {p["name"]: p for p in pod_container(nats)["ports"]}
    assert pod_container(nats)["readinessProbe"]["httpGet"]["port"] == "monitor" and "monitor" in ports


def test_every_variable_of_auth_conf_comes_from_the_secret_nats_reads(
    render: Render, nats_files: NatsFiles, bus_secret: dict[str, str]
) -> None:
    objects = render("envs/prod")
    # nats-server substitutes unquoted $NAMEs; quoted strings ("$JS.API...") and comments stay as they are.
    unquoted = re.sub(r'"[^"]*"|#[^\n]*', "", nats_files(objects)["auth.conf"])
    referenced = set(re.findall(r"\$([A-Za-z_][A-Za-z0-9_]*)", unquoted))
    users = [*busauth.STATIC_USERS, *peoplefile.load(PEOPLE)]  # `secret --people` gives each person a password
    assert referenced == {busauth.password_variable(u) for u in users} | {busauth.ISSUER_VARIABLE}
    assert referenced <= set(bus_secret), "every $VARIABLE must be a key of `flotilla bus-config secret --people`"
    [nats] = [w for w in workloads(objects, "nats") if w["kind"] == "StatefulSet"]
    assert env_from_secrets(pod_container(nats)) == [SECRET]
    assert not pod_container(nats)["envFrom"][0].get("optional"), "NATS must not start without its users"


@pytest.mark.parametrize("service", SERVICE_USERS, ids=str)
def test_each_service_connects_over_tls_as_itself_with_only_its_own_password(render: Render, service: Service) -> None:
    variable = busauth.password_variable(service.value)
    expected = {variable: variable}
    if service is Service.REGISTRATION:
        expected[busauth.ISSUER_SEED_VARIABLE] = busauth.ISSUER_SEED_VARIABLE  # it signs callout answers
        revoker = busauth.password_variable(busauth.REVOKER_USER)  # it kicks a deregistered cluster's connections
        expected[revoker] = revoker
    for workload in workloads(render("envs/prod"), service.value):
        name, c = workload["metadata"]["name"], pod_container(workload)
        env = [item["name"] for item in c["env"]]
        url = {item["name"]: item.get("value") for item in c["env"]}["FLOTILLA_NATS_URL"]
        assert url == f"tls://{service.value}:$({variable})@{IN_CLUSTER}", name
        assert env.index(variable) < env.index("FLOTILLA_NATS_URL"), f"{name}: $(VAR) needs the variable first"
        assert secret_keys(c) == expected, f"{name} must read its own password from {SECRET} and nothing else"
        assert SECRET not in env_from_secrets(c), f"{name} must not see the other services' passwords"
        if service is Service.REGISTRATION:
            revoker_url = {item["name"]: item.get("value") for item in c["env"]}[
                "FLOTILLA_REGISTRATION_REVOKER_NATS_URL"
            ]
            assert revoker_url == f"tls://{busauth.REVOKER_USER}:$({revoker})@{IN_CLUSTER}", name
            assert env.index(revoker) < env.index("FLOTILLA_REGISTRATION_REVOKER_NATS_URL"), name
        ca = {item["name"]: item.get("value") for item in c["env"]}[CA_ENV]
        assert mounted_file(workload, ca) == (SERVER_TLS_SECRET, "ca.crt"), name


def test_node_agent_has_no_service_password_and_logs_in_as_its_cluster(render: Render) -> None:
    objects = render("envs/prod")
    [daemonset] = workloads(objects, "node-agent")
    c = pod_container(daemonset)
    env = {item["name"]: item.get("value") for item in c["env"]}
    shared = only(objects, "ConfigMap", "flotilla-config")["data"]
    assert not secret_keys(c) and SECRET not in env_from_secrets(c), "node-agent must get no password of the bus"
    assert env["FLOTILLA_NODE_AGENT_BUS_LOGIN"] == "cluster"
    url = env.get("FLOTILLA_NATS_URL", shared["FLOTILLA_NATS_URL"])
    assert url == f"tls://{IN_CLUSTER}" and not nats_user(url), "no user: it joins, then connects as c.<cluster>.<node>"
    assert "node-agent" in env_from_secrets(c), "its join token (optional Secret node-agent) still reaches it"
    assert mounted_file(daemonset, env[CA_ENV]) == (SERVER_TLS_SECRET, "ca.crt")


def test_stream_replicas_job_edits_the_streams_as_admin_over_tls(render: Render) -> None:
    job = only(render("envs/prod"), "Job", "nats-stream-replicas")
    c = pod_container(job)
    env = {item["name"]: item.get("value") for item in c["env"]}
    assert env["NATS_URL"] == f"tls://{IN_CLUSTER}" and env["NATS_USER"] == permissions.ADMIN_USER
    assert secret_keys(c) == {"NATS_PASSWORD": busauth.password_variable(permissions.ADMIN_USER)}
    assert mounted_file(job, env["NATS_CA"]) == (SERVER_TLS_SECRET, "ca.crt")


def test_dev_bus_stays_open(render: Render, nats_files: NatsFiles) -> None:
    """Tilt's overlay runs without users or TLS: nothing to create first, and it says so in its files."""
    objects = render("envs/dev")
    files = nats_files(objects)
    assert "auth.conf" not in files
    assert comments_only(files["security.conf"]) and comments_only(files["cluster-tls.conf"])
    assert only(objects, "ConfigMap", "flotilla-config")["data"]["FLOTILLA_NATS_URL"].startswith("nats://")
    assert SECRET not in json.dumps(objects) and not [o for o in objects if "cert-manager" in o["apiVersion"]]


# cert-manager v1 fields used here (https://cert-manager.io/docs/reference/api-docs/): kubernetes-validate has no
# schema for custom resources, so the spec keys are checked against these lists and the chain by its references.
CERTIFICATE_FIELDS = {
    "secretName", "commonName", "dnsNames", "ipAddresses", "uris", "emailAddresses", "duration", "renewBefore",
    "isCA", "usages", "privateKey", "issuerRef", "subject", "secretTemplate",
}  # fmt: skip
PRIVATE_KEY_FIELDS = {"algorithm", "size", "encoding", "rotationPolicy"}
USAGES = {"digital signature", "key encipherment", "server auth", "client auth", "cert sign", "crl sign"}
ISSUER_KINDS = {"selfSigned", "ca"}


def dns_match(pattern: str, host: str) -> bool:
    """A certificate name matches a host as TLS clients check it: a leading `*` stands for exactly one label."""
    want, have = pattern.split("."), host.split(".")
    return len(want) == len(have) and all(
        w in ("*", h) if i == 0 else w == h for i, (w, h) in enumerate(zip(want, have, strict=True))
    )


def test_cert_manager_chain_gives_nats_a_certificate_for_the_names_clients_and_routes_dial(
    render: Render, nats_files: NatsFiles
) -> None:
    objects = render("envs/prod")
    issuers = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Issuer"}
    certificates = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Certificate"}
    for obj in [*issuers.values(), *certificates.values()]:
        assert obj["apiVersion"] == "cert-manager.io/v1" and obj["metadata"]["namespace"] == "flotilla"
    for name, issuer in issuers.items():
        assert len(issuer["spec"]) == 1 and set(issuer["spec"]) <= ISSUER_KINDS, name
    for name, cert in certificates.items():
        spec = cert["spec"]
        assert set(spec) <= CERTIFICATE_FIELDS, f"{name}: unknown fields {set(spec) - CERTIFICATE_FIELDS}"
        assert set(spec["privateKey"]) <= PRIVATE_KEY_FIELDS and set(spec.get("usages", [])) <= USAGES, name
        assert spec["issuerRef"]["kind"] == "Issuer" and spec["issuerRef"]["name"] in issuers, name
    # selfSigned Issuer -> CA Certificate -> CA Issuer -> nats-server-tls
    server = certificates[SERVER_TLS_SECRET]["spec"]
    ca_issuer = issuers[server["issuerRef"]["name"]]["spec"]["ca"]
    [ca] = [c["spec"] for c in certificates.values() if c["spec"]["secretName"] == ca_issuer["secretName"]]
    assert ca["isCA"] is True and "selfSigned" in issuers[ca["issuerRef"]["name"]]["spec"]
    assert ca["privateKey"]["rotationPolicy"] == "Never", "a renewed CA keeps its key: clients keep trusting it"
    assert server["secretName"] == SERVER_TLS_SECRET and not server.get("isCA")
    assert {"server auth", "client auth"} <= set(server["usages"]), "routes are mutual TLS"
    routes = re.findall(r"nats://([a-z0-9.-]+):6222", nats_files(objects)["nats.conf"])
    dialled = ["nats.flotilla.svc", "nats.flotilla.svc.cluster.local", "nats", "localhost", *routes]
    for host in dialled:
        assert any(dns_match(p, host) for p in server["dnsNames"]), f"{host} is not in the server certificate"


# --- a real nats-server with the overlay's configuration ---------------------------------------------------------


@dataclass
class Server:
    port: int
    monitor_port: int
    cluster_port: int
    process: subprocess.Popen[bytes]
    log: Path

    def url(self, user: str, password: str) -> str:
        return f"tls://{user}:{password}@localhost:{self.port}"

    def monitor(self, path: str) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}{path}", timeout=2) as answer:
            return dict(json.load(answer))


def start(conf: Path, environ: dict[str, str], port: int, monitor_port: int, cluster_port: int = 0) -> Server:
    log = conf.parent / "nats.log"
    with log.open("wb") as out:
        process = subprocess.Popen([find_nats_server(), "-c", str(conf)], env=environ, stdout=out, stderr=out)
    server = Server(port, monitor_port, cluster_port, process, log)

    def monitoring() -> bool:
        assert process.poll() is None, f"nats-server refused the overlay's configuration:\n{log.read_text()[-2000:]}"
        server.monitor("/varz")
        return True

    try:
        eventually_sync(monitoring, "nats-server's monitoring port", timeout_s=10, retrying=(OSError,))
    except ConditionNotMet as late:
        stop(server)
        raise AssertionError(f"nats-server did not start:\n{log.read_text()[-2000:]}") from late
    return server


def stop(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="module")
def prod_files(render: Render, nats_files: NatsFiles) -> dict[str, str]:
    return nats_files(render("envs/prod"))


@pytest.fixture(scope="module")
def server(
    prod_files: dict[str, str],
    localize: Localize,
    test_tls: Path,
    bus_secret: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    """One server of the prod configuration (the cluster block left out), the Secret's values in its environment."""
    port, monitor_port = free_port(), free_port()
    conf = localize(prod_files, tmp_path_factory.mktemp("nats"), test_tls, port=port, monitor_port=monitor_port)
    running = start(conf, {"POD_NAME": "nats-0", **bus_secret}, port, monitor_port)
    yield running
    stop(running)


@pytest.fixture
def trust_test_ca(monkeypatch: pytest.MonkeyPatch, test_tls: Path) -> None:
    monkeypatch.setenv(CA_ENV, str(test_tls / "ca.crt"))  # as the pods' FLOTILLA_NATS_CA names the mounted ca.crt


async def live_subscription(watcher: WatchedConnection, subject: str) -> Subscription:
    """A subscription the server has certainly registered: a probe published to it came back.

    (A flush is not proof: when the server's first PING crosses nats-py's connect handshake, the PONG it answers
    later resolves the next flush before the server has read what came before it.)
    """
    sub = await watcher.nc.subscribe(subject)
    probe = subject.replace(">", "probe").replace("*", "probe")
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        await watcher.nc.publish(probe, b"probe")
        try:
            await sub.next_msg(timeout=0.2)
        except nats.errors.TimeoutError:
            continue
        # Messages from one connection arrive in order: once the fence is back, no probe is left in flight.
        await watcher.nc.publish(probe, b"fence")
        while (await sub.next_msg(timeout=3)).data != b"fence":
            pass
        return sub
    raise AssertionError(f"the subscription to {subject} never received its probe")


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


def speak_plaintext(port: int, lines: bytes, greeted: bool = True) -> tuple[bytes, bytes]:
    """(the server's greeting, all it says after `lines`) on a plaintext TCP connection, until it hangs up."""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        greeting = sock.recv(4096) if greeted else b""
        sock.sendall(lines)
        answer = b""
        try:
            while chunk := sock.recv(4096):
                answer += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return greeting, answer


@pytest.mark.integration
def test_routes_between_servers_use_mutual_tls(
    prod_files: dict[str, str],
    localize: Localize,
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
            conf = localize(
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


def test_every_nats_config_bounds_payload_and_subscriptions_per_connection(tmp_path: Path) -> None:
    """The bounds a member's flood meets on the server are the policy's, in production and in `flotilla up`."""
    wanted = {
        "max_payload": str(permissions.MAX_PAYLOAD_BYTES),
        "max_subscriptions": str(permissions.MAX_SUBSCRIPTIONS_PER_CONNECTION),
    }
    prod = (Path(__file__).parents[2] / "deploy/components/nats/nats.conf").read_text()
    local = NatsServer(state_dir=tmp_path).write_config().read_text()
    for text in (prod, local):
        found = dict(re.findall(r"^(max_payload|max_subscriptions): (\S+)$", text, re.MULTILINE))
        assert found == wanted, text
