"""The production bus (deploy/envs/prod with components/bus-security) on its rendered manifests: the committed
auth.conf is what the policy renders, nats.conf includes it with TLS on clients and routes, each pod gets its own
password and the CA, cert-manager's chain names what clients and routes dial, and the dev overlay stays open.
The same configuration on a real nats-server: test_bus_security_server.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from bus_security_support import (
    IN_CLUSTER,
    SECRET,
    SERVER_TLS_SECRET,
    SERVICE_USERS,
    NatsFiles,
    Render,
    env_from_secrets,
    mounted_file,
    only,
    pod_container,
    secret_keys,
    workloads,
)
from click.testing import CliRunner

from flotilla_client import busauth, peoplefile
from flotilla_client.cli.main import cli
from flotilla_client.natsserver import NatsServer
from flotilla_contracts import permissions
from flotilla_contracts.subjects import Service
from flotilla_runtime.natsconn import CA_ENV, nats_user

ROOT = Path(__file__).resolve().parents[2]
AUTH_CONF = ROOT / "deploy" / "components" / "bus-security" / "auth.conf"
PEOPLE = AUTH_CONF.with_name("people.yaml")  # the overlay's people and roles (test_bus_people.py)


def comments_only(text: str) -> bool:
    return all(not line.strip() or line.lstrip().startswith("#") for line in text.splitlines())


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


def test_every_nats_config_bounds_payload_and_subscriptions_per_connection(tmp_path: Path) -> None:
    """The bounds a member's flood meets on the server are the policy's, in production and in `flotilla up`."""
    wanted = {
        "max_payload": str(permissions.MAX_PAYLOAD_BYTES),
        "max_subscriptions": str(permissions.MAX_SUBSCRIPTIONS_PER_CONNECTION),
    }
    prod = (ROOT / "deploy/components/nats/nats.conf").read_text()
    local = NatsServer(state_dir=tmp_path).write_config().read_text()
    for text in (prod, local):
        found = dict(re.findall(r"^(max_payload|max_subscriptions): (\S+)$", text, re.MULTILINE))
        assert found == wanted, text
