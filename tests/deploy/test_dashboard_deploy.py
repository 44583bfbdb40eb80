"""The dashboard in production (deploy/components/dashboard in envs/prod, dashboard/Dockerfile): nginx serves the
built page and config.json, and nats-server has a WebSocket listener with TLS for the page to speak NATS over.

Checked on the rendered manifests, the parsed Dockerfile (Docker cannot run here), and a real nats-server running
the overlay's configuration: a browser's way in (wss:// with a person's user and password) works as the overlay
renders it, and plain ws:// or a wrong password does not.
"""

from __future__ import annotations

import getpass
import json
import re
import shlex
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats.errors
import pytest
import test_bus_people
from bus_security_support import Server, live_subscription, mounted_file, only, pod_container, speak_plaintext
from integration_support import connect_watched
from test_dockerfiles import dockerignore_includes, parse

from flotilla_client import busauth, peoplefile
from flotilla_client.cli import dashboard as dashboard_cli
from flotilla_client.natsserver import free_port
from flotilla_contracts import permissions, subjects
from flotilla_runtime.natsconn import CA_ENV
from flotilla_testkit import eventually_sync

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "dashboard" / "Dockerfile"
PEOPLE = ROOT / "deploy" / "components" / "bus-security" / "people.yaml"
CERTIFICATE_SECRET = "nats-server-tls"
ADMIN_PASSWORD = busauth.password_variable(permissions.ADMIN_USER)
# `flotilla dashboard`'s policy (cli/dashboard.py CSP), WebSockets over TLS only.
JAVASCRIPT = ("application/javascript", "text/javascript")  # nginx's mime.types, older and newer
CSP_PROD = "default-src 'self'; connect-src 'self' wss:; img-src 'self' data:; frame-ancestors 'none'"
ORCHESTRATOR = test_bus_people.ORCHESTRATOR
# test_bus_people's server of the prod configuration with its people (alice operator, vera viewer), and what it needs.
people_file = test_bus_people.people_file
people_conf = test_bus_people.people_conf
secret_values = test_bus_people.secret_values
people_server = test_bus_people.people_server
Manifest = list[dict[str, Any]]
Render = Callable[[str], Manifest]
NatsFiles = Callable[[Manifest], dict[str, str]]


def dashboard_objects(objects: Manifest) -> dict[str, dict[str, Any]]:
    """kind -> the dashboard's object of that kind (its ConfigMap's name carries the generator's hash)."""
    found: dict[str, dict[str, Any]] = {}
    for o in objects:
        if o["metadata"].get("labels", {}).get("app.kubernetes.io/name") == "dashboard":
            assert o["kind"] not in found, f"two dashboard {o['kind']}s"
            found[o["kind"]] = o
    return found


def websocket_block(conf: str) -> str:
    """The body of the top-level `websocket { ... }` block (braces matched)."""
    match = re.search(r"^websocket \{", conf, re.M)
    assert match, "no websocket block"
    depth, start_at = 0, match.end() - 1
    for end in range(start_at, len(conf)):
        depth += {"{": 1, "}": -1}.get(conf[end], 0)
        if depth == 0:
            return conf[start_at + 1 : end]
    raise AssertionError("unbalanced websocket block")


def volume_file(workload: dict[str, Any], path: str) -> tuple[str, str]:
    """(ConfigMap name, key) of the file the container sees at `path`, from a ConfigMap volume with items."""
    volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
    for mount in pod_container(workload)["volumeMounts"]:
        prefix = mount["mountPath"].rstrip("/") + "/"
        config_map = volumes[mount["name"]].get("configMap")
        if path.startswith(prefix) and config_map:
            items = {i["path"]: i["key"] for i in config_map["items"]}
            return config_map["name"], items[path[len(prefix) :]]
    raise AssertionError(f"{path} is not mounted from a ConfigMap")


# --- the page: Deployment, Service, ConfigMap ---------------------------------------------------------------------


def test_prod_serves_the_page_with_its_config_from_a_config_map(render: Render) -> None:
    objects = render("envs/prod")
    found = dashboard_objects(objects)
    assert set(found) == {"Deployment", "Service", "ConfigMap"}
    deployment, service, config_map = found["Deployment"], found["Service"], found["ConfigMap"]
    c = pod_container(deployment)
    assert c["image"] == "flotilla/dashboard:0.1.0", "prod pins the tag like the services' images"
    [port] = c["ports"]
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(8080, port["name"])]

    # nginx's server block (from the ConfigMap) listens on the container port and serves config.json from where
    # the ConfigMap's config.json is mounted; the probes ask a path it answers.
    name = config_map["metadata"]["name"]
    assert volume_file(deployment, "/etc/nginx/conf.d/default.conf") == (name, "default.conf")
    server = config_map["data"]["default.conf"]
    assert re.search(rf"^\s*listen {port['containerPort']};$", server, re.M)
    alias = re.search(r"location = /config.json \{\s*alias ([^;]+);", server)
    assert alias and volume_file(deployment, alias.group(1)) == (name, "config.json")
    for probe in ("readinessProbe", "livenessProbe"):
        http = c[probe]["httpGet"]
        assert http["port"] == port["name"] and f"location = {http['path']} {{" in server, probe
    csp = re.search(r'add_header Content-Security-Policy "([^"]+)" always;', server)
    assert csp and csp.group(1) == CSP_PROD == dashboard_cli.CSP.replace("ws: wss:", "wss:")

    # Non-root, read-only root (nginx writes only its emptyDir /tmp), no capabilities, no API token.
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
    security = c["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert "emptyDir" in {v["name"]: v for v in pod["volumes"]}[mounts["/tmp"]]


def test_config_json_points_at_the_websocket_listener_and_lists_the_people_of_the_overlay(render: Render) -> None:
    objects = render("envs/prod")
    config = json.loads(dashboard_objects(objects)["ConfigMap"]["data"]["config.json"])
    assert set(config) == {"websocket_url", "roles"}
    url = re.fullmatch(r"wss://([a-z0-9.-]+):(\d+)", config["websocket_url"])
    assert url, f"{config['websocket_url']}: the page must speak TLS to NATS"
    host, port = url.groups()
    nats_service = only(objects, "Service", "nats")
    assert int(port) in [p["port"] for p in nats_service["spec"]["ports"] if p["name"] == "websocket"]
    certificate = only(objects, "Certificate", CERTIFICATE_SECRET)
    assert host in certificate["spec"]["dnsNames"], "the browser checks the listener's certificate against it"
    people = {name: role.value for name, role in peoplefile.load(PEOPLE).items()}
    assert config["roles"] == people, (
        "config.json's roles must be people.yaml's (the page shows an operator the actions): "
        "update deploy/components/dashboard/config.json"
    )


def test_dev_has_neither_the_page_nor_a_websocket_listener(render: Render, nats_files: NatsFiles) -> None:
    objects = render("envs/dev")
    assert not dashboard_objects(objects)
    text = nats_files(objects)["websocket.conf"]
    assert all(not line.strip() or line.lstrip().startswith("#") for line in text.splitlines())


# --- NATS's WebSocket listener ------------------------------------------------------------------------------------


def test_prod_nats_listens_for_websockets_with_the_client_certificate_and_the_same_users(
    render: Render, nats_files: NatsFiles
) -> None:
    objects = render("envs/prod")
    files = nats_files(objects)
    assert re.search(r'^include "websocket.conf"$', files["nats.conf"], re.M), "top level of nats.conf"
    block = websocket_block(files["websocket.conf"])
    assert "no_tls" not in block and "authorization" not in block, "TLS, and the users of the client port"
    listen = re.search(r"^\s*listen: 0\.0\.0\.0:(\d+)$", block, re.M)
    assert listen
    [nats] = [o for o in objects if o["kind"] == "StatefulSet" and o["metadata"]["name"] == "nats"]
    ports = {p["name"]: p["containerPort"] for p in pod_container(nats)["ports"]}
    assert ports["websocket"] == int(listen.group(1))
    service_ports = {p["name"]: p for p in only(objects, "Service", "nats")["spec"]["ports"]}
    assert service_ports["websocket"]["targetPort"] == "websocket"
    paths = dict(re.findall(r'^\s*(cert_file|key_file): "([^"]+)"', block, re.M))
    assert mounted_file(nats, paths["cert_file"]) == (CERTIFICATE_SECRET, "tls.crt")
    assert mounted_file(nats, paths["key_file"]) == (CERTIFICATE_SECRET, "tls.key")


# --- the image ---------------------------------------------------------------------------------------------------


def test_dockerfile_builds_the_page_from_the_lock_and_serves_it_as_non_root(render: Render) -> None:
    _, stages = parse(DOCKERFILE)
    by_name = {s.name: s for s in stages}
    build, final = by_name["build"], stages[-1]
    assert build.base.startswith("node:") and final.base.startswith("nginxinc/nginx-unprivileged:")
    assert final.base not in by_name, "the image does not derive from the build stage"

    # The lock and npm ci before the sources: exactly what the lock says, in a layer cached until it changes.
    steps = build.instructions
    lock = next(i for i, (kw, args) in enumerate(steps) if kw == "COPY" and "dashboard/package-lock.json" in args)
    npm_ci = next(i for i, (kw, args) in enumerate(steps) if kw == "RUN" and shlex.split(args)[:2] == ["npm", "ci"])
    sources = next(i for i, (kw, args) in enumerate(steps) if kw == "COPY" and "dashboard/src" in args)
    assert lock < npm_ci < sources
    assert "npm run build" in build.all("RUN")[-1]

    # Only the built files in the image, where nginx's server block serves from; no package manager runs there.
    deployment = dashboard_objects(render("envs/prod"))["Deployment"]
    config_map = dashboard_objects(render("envs/prod"))["ConfigMap"]
    root = re.search(r"^\s*root ([^;]+);", config_map["data"]["default.conf"], re.M)
    assert root and final.all("COPY") == [f"--from=build /dashboard/dist {root.group(1)}"]
    assert not final.all("RUN")
    [user] = final.all("USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and uid != "0", "a numeric non-root user (runAsNonRoot can check it)"
    assert int(uid) == deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert final.all("EXPOSE") == [str(pod_container(deployment)["ports"][0]["containerPort"])]


def test_dockerignore_sends_the_dashboard_sources_and_lock_but_not_its_build_output() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    dashboard = ROOT / "dashboard"
    needed = ["package.json", "package-lock.json", "build.mjs"]
    needed += [p.relative_to(dashboard).as_posix() for p in (dashboard / "src").rglob("*") if p.is_file()]
    for path in needed:
        assert dockerignore_includes(patterns, f"dashboard/{path}"), f".dockerignore leaves out dashboard/{path}"
    for path in ("dashboard/node_modules/esbuild/package.json", "dashboard/dist/main.js", "dashboard/test/check.mjs"):
        assert not dockerignore_includes(patterns, path), f".dockerignore lets in {path}"


# --- a real nats-server with the overlay's configuration ---------------------------------------------------------


def websocket_port(server: Server) -> int:
    """The port the localized WebSocket listener of `server` listens on (localize_nats_config picks a free one)."""
    listen = re.search(r"listen: 127\.0\.0\.1:(\d+)", (server.log.parent / "websocket.conf").read_text())
    assert listen, "the localized WebSocket listener"
    return int(listen.group(1))


@pytest.mark.integration
async def test_a_person_speaks_nats_over_wss_with_their_own_password_and_role(
    people_server: Server, secret_values: dict[str, str], test_tls: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the page connects (wss://, the person's user and password, the bus's CA trusted), on the prod
    configuration with test_bus_people's people (alice operator, vera viewer): alice pauses in her own name, vera
    may not; a wrong password and a plain ws:// upgrade are refused."""
    monkeypatch.setenv(CA_ENV, str(test_tls / "ca.crt"))
    port = websocket_port(people_server)
    assert people_server.monitor("/varz")["websocket"]["port"] == port
    assert "tls_cert_not_after" in people_server.monitor("/varz")["websocket"], "the listener has a certificate"

    def wss(user: str, password: str | None = None) -> str:
        return f"wss://{user}:{password or secret_values[busauth.password_variable(user)]}@localhost:{port}"

    admin = await connect_watched(people_server.url(permissions.ADMIN_USER, secret_values[ADMIN_PASSWORD]))
    alice, vera = await connect_watched(wss("alice")), await connect_watched(wss("vera"))
    try:
        assert alice.nc.connected_url is not None and alice.nc.connected_url.scheme == "wss"
        seen = await live_subscription(admin, subjects.service_commands(ORCHESTRATOR))
        pause_as_alice = subjects.command_by(ORCHESTRATOR, "upgrade.pause", "alice")
        await alice.nc.publish(pause_as_alice, b"{}")
        assert (await seen.next_msg(timeout=3)).subject == pause_as_alice
        pause_as_vera = subjects.command_by(ORCHESTRATOR, "upgrade.pause", "vera")
        await vera.nc.publish(pause_as_vera, b"{}")
        assert await vera.denied(f'publish to "{pause_as_vera}"'), vera.errors
        connz = people_server.monitor("/connz?auth=true")
        assert {"alice", "vera"} <= {c.get("authorized_user") for c in connz["connections"]}
    finally:
        for connection in (admin, alice, vera):
            await connection.nc.close()
    with pytest.raises(nats.errors.Error) as refused:
        await connect_watched(wss("alice", "not-her-password"))
    assert "authorization violation" in str(refused.value).lower()
    # In the clear (ws://): the listener expects a TLS handshake and never upgrades to a WebSocket. (nats-py retries
    # a refused first connection for ever, so the handshake is spoken by hand.)
    upgrade = (
        f"GET / HTTP/1.1\r\nHost: localhost:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    _, answer = speak_plaintext(port, upgrade.encode(), greeted=False)
    assert answer and not answer.startswith(b"HTTP/1.1 101"), answer[:200]


# --- a real nginx with the overlay's server block ------------------------------------------------------------------

DIST = ROOT / "dashboard" / "dist"
# What nginxinc/nginx-unprivileged's own nginx.conf holds around conf.d (pid and temporary files in /tmp, mime types),
# with the test's folder in place of /tmp; `user` matters only when the test runs as root (workers stay this user).
NGINX_MAIN = """user {user};
worker_processes 1;
error_log {folder}/error.log notice;
pid {folder}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    client_body_temp_path {folder}/client_temp;
    proxy_temp_path {folder}/proxy_temp;
    fastcgi_temp_path {folder}/fastcgi_temp;
    uwsgi_temp_path {folder}/uwsgi_temp;
    scgi_temp_path {folder}/scgi_temp;
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log off;
    include {folder}/conf.d/*.conf;
}}
"""


def find_nginx() -> str:
    """Debian's nginx (`make nginx` installs it); fails, never skips, when it is missing."""
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
    if found is None or not Path("/etc/nginx/mime.types").exists():
        pytest.fail("no nginx: run `make nginx` (it installs Debian's nginx-light)")
    return found


@pytest.mark.integration
def test_nginx_serves_the_built_page_and_config_json_with_the_overlay_server_block(
    render: Render, tmp_path: Path
) -> None:
    """The rendered default.conf in a real nginx, laid out as the pod has it (the built dashboard/dist as the
    image's web root, config.json where the ConfigMap mounts it; only the port and those paths made local)."""
    assert (DIST / "index.html").is_file(), "the page is not built: `make dashboard`"
    objects = render("envs/prod")
    config_map = dashboard_objects(objects)["ConfigMap"]
    port = free_port()
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "config.json").write_text(config_map["data"]["config.json"])
    server = config_map["data"]["default.conf"]
    for old, new in (
        ("listen 8080;", f"listen 127.0.0.1:{port};"),
        ("root /usr/share/nginx/html;", f"root {DIST};"),
        ("alias /etc/flotilla-dashboard/config.json;", f"alias {tmp_path}/config.json;"),
    ):
        assert old in server, f"default.conf no longer holds {old!r}: update this test's localization"
        server = server.replace(old, new)
    (tmp_path / "conf.d" / "default.conf").write_text(server)
    (tmp_path / "nginx.conf").write_text(NGINX_MAIN.format(user=getpass.getuser(), folder=tmp_path))
    nginx = [find_nginx(), "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")]
    checked = subprocess.run([*nginx, "-t"], capture_output=True, text=True, timeout=30, check=False)
    assert checked.returncode == 0, f"nginx refuses the server block:\n{checked.stderr}"
    process = subprocess.Popen([*nginx, "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:

        def get(path: str) -> tuple[int, dict[str, str], bytes]:
            assert process.poll() is None, (tmp_path / "error.log").read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as answer:
                    return answer.status, dict(answer.headers), answer.read()
            except urllib.error.HTTPError as error:
                return error.code, dict(error.headers), b""

        status, headers, body = eventually_sync(lambda: get("/"), "nginx serving", timeout_s=10, retrying=(OSError,))
        assert status == 200 and headers["Content-Type"] == "text/html" and body == (DIST / "index.html").read_bytes()
        assert headers["Content-Security-Policy"] == CSP_PROD and headers["X-Content-Type-Options"] == "nosniff"
        status, headers, body = get("/main.js")
        assert status == 200 and headers["Content-Type"] in JAVASCRIPT, "browsers run a module script of these types"
        status, headers, body = get("/config.json")
        assert (status, headers["Content-Type"]) == (200, "application/json")
        assert json.loads(body) == json.loads(config_map["data"]["config.json"])
        assert headers["Content-Security-Policy"] == CSP_PROD, "every answer carries the policy"
        assert get("/healthz")[0] == 200 and get("/no-such-file")[0] == 404
    finally:
        process.terminate()
        process.wait(10)
