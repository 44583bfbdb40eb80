"""People in the production overlay: a people file in git (names and roles), their passwords in the Secret.

`flotilla bus-config nats-auth --people FILE` makes each person a user with their role's grant and a
`$FLOTILLA_BUS_PASSWORD_<NAME>` password; `secret --people` and `person NAME` fill those keys. Checked on the
generated text, with the real kubectl (the one-key patch), and on a real nats-server running the rendered prod
configuration with a people file's auth.conf and the generated Secret in its environment.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nats.errors
import pytest
import yaml
from bus_security_support import Server, live_subscription, single_server
from click.testing import CliRunner, Result
from integration_support import connect_watched

from flotilla_client import busauth
from flotilla_client.cli.main import cli
from flotilla_client.natsserver import find_nats_server
from flotilla_contracts import permissions, roles, subjects
from flotilla_contracts.roles import Role
from flotilla_contracts.subjects import Service
from flotilla_runtime.natsconn import CA_ENV

ROOT = Path(__file__).resolve().parents[2]
KUBECTL = ROOT / ".tools" / "k8s" / "bin" / "kubectl"  # conftest.kubectl's (conftest cannot be imported by name)
PEOPLE = {"alice": Role.OPERATOR, "vera": Role.VIEWER, "olga": Role.ADMIN}
ORCHESTRATOR = Service.UPGRADE_ORCHESTRATOR
Manifest = list[dict[str, Any]]


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, ["bus-config", *args])


@pytest.fixture(scope="module")
def people_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("people") / "people.yaml"
    path.write_text("".join(f"- {{name: {name}, role: {role.value}}}\n" for name, role in PEOPLE.items()))
    return path


@pytest.fixture(scope="module")
def people_conf(people_file: Path) -> str:
    result = run("nats-auth", "--people", str(people_file))
    assert result.exit_code == 0, result.output
    return result.stdout


def user_blocks(conf: str) -> dict[str, tuple[str, list[str], list[str]]]:
    """user -> (password text, publish allow, subscribe allow) of every user block of the generated text."""
    pattern = r'\{ user: "([^"]+)", password: (\S+), permissions: \{\n\s*publish: \{ allow: (\[.*?\]) \}\n'
    pattern += r"\s*subscribe: \{ allow: (\[.*?\]) \}"
    return {u: (p, json.loads(pub), json.loads(sub)) for u, p, pub, sub in re.findall(pattern, conf)}


def test_each_person_gets_their_roles_grant_and_a_password_from_the_secret(people_conf: str) -> None:
    blocks = user_blocks(people_conf)
    for name, role in PEOPLE.items():
        password, publish, subscribe = blocks[name]
        grant = roles.role_grant(role, name)
        assert password == f"${busauth.password_variable(name)}" == "$FLOTILLA_BUS_PASSWORD_" + name.upper()
        assert (publish, subscribe) == (list(grant.publish), list(grant.subscribe)), name
    assert set(blocks) == {*busauth.STATIC_USERS, *PEOPLE}
    [auth_users] = re.findall(r"auth_users: \[(.*)\]", people_conf)
    assert set(json.loads(f"[{auth_users}]")) == {*busauth.STATIC_USERS, *PEOPLE}, "people bypass the callout"
    # The static users are exactly as without people: adding a person changes nobody else's grant.
    result = run("nats-auth")
    assert user_blocks(result.stdout) == {u: blocks[u] for u in busauth.STATIC_USERS}


def test_the_secret_has_a_fresh_password_for_every_variable_and_says_how_a_person_connects(
    people_file: Path, people_conf: str
) -> None:
    result = run("secret", "--people", str(people_file), "-o", "json")
    assert result.exit_code == 0, result.output
    values = json.loads(result.stdout)["stringData"]
    unquoted = re.sub(r'"[^"]*"|#[^\n]*', "", people_conf)
    assert set(re.findall(r"\$([A-Za-z_][A-Za-z0-9_]*)", unquoted)) <= set(values), "nats-server would not start"
    passwords = [values[busauth.password_variable(u)] for u in [*busauth.STATIC_USERS, *PEOPLE]]
    assert len(set(passwords)) == len(passwords)
    assert 'FLOTILLA_NATS_URL="tls://alice:$(kubectl -n flotilla get secret flotilla-bus-auth' in result.stderr


def test_person_patches_one_key_of_the_secret_with_kubectl(people_file: Path, tmp_path: Path) -> None:
    assert KUBECTL.exists(), f"no {KUBECTL.relative_to(ROOT)}: run `make k8s-bins` (it builds it)"
    made = run("secret")
    assert made.exit_code == 0, made.output
    (tmp_path / "secret.yaml").write_text(made.stdout)
    before = yaml.safe_load(made.stdout)
    added = run("person", "alice", "--people", str(people_file))
    assert added.exit_code == 0, added.output
    patched = subprocess.run(
        [str(KUBECTL), "patch", "-f", str(tmp_path / "secret.yaml"), "--local", "--type", "merge",
         "--patch-file", "/dev/stdin", "-o", "yaml"],
        input=added.stdout, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert patched.returncode == 0, patched.stderr
    after = yaml.safe_load(patched.stdout)
    assert after["stringData"] == before["stringData"], "nobody else's password changes"
    [(key, encoded)] = after["data"].items()
    assert key == "FLOTILLA_BUS_PASSWORD_ALICE"
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]{31}", base64.b64decode(encoded).decode())
    assert "kubectl -n flotilla patch secret flotilla-bus-auth --type merge --patch-file /dev/stdin" in added.stderr
    assert 'FLOTILLA_NATS_URL="tls://alice:' in added.stderr
    again = run("person", "alice", "--people", str(people_file))
    assert json.loads(again.stdout) != json.loads(added.stdout), "a fresh password each time"
    unlisted = run("person", "bob", "--people", str(people_file))
    assert unlisted.exit_code == 2 and "bob is not in --people" in unlisted.stderr


BAD_FILES = {
    "unknown role": ("- {name: alice, role: superuser}\n", "entry 1: alice's role 'superuser' is not one of viewer"),
    "bad name": ("- {name: vera, role: viewer}\n- {name: Bob.S, role: viewer}\n", "entry 2: user name 'Bob.S'"),
    "duplicate": ("- {name: ann, role: viewer}\n- {name: ann, role: admin}\n", "entry 2: 'ann' is listed twice"),
    "reserved": ("- {name: scheduler, role: viewer}\n", "entry 1: user name 'scheduler' is reserved"),
    "no list": ("name: alice\nrole: viewer\n", "expected a list of `- {name: NAME, role: ROLE}`, got a mapping"),
    "a password": ("- {name: ann, role: viewer, password: x}\n", "entry 1: expected exactly `{name: NAME, role:"),
    "not yaml": ("- {name: ann\n", "not YAML"),
}


@pytest.mark.parametrize("case", BAD_FILES, ids=str)
@pytest.mark.parametrize("command", [("nats-auth",), ("secret",), ("person", "ann")], ids=lambda c: c[0])
def test_a_bad_people_file_is_a_clear_error(case: str, command: tuple[str, ...], tmp_path: Path) -> None:
    text, message = BAD_FILES[case]
    path = tmp_path / "people.yaml"
    path.write_text(text)
    result = run(*command, "--people", str(path))
    assert result.exit_code == 2, result.output
    assert result.stdout == "", "nothing to pipe into kubectl"
    assert result.stderr.startswith(f"flotilla: error: --people {path}") and message in result.stderr, result.stderr


def test_an_empty_people_file_is_nobody(tmp_path: Path) -> None:
    (tmp_path / "people.yaml").write_text("# nobody yet\n[]\n")
    assert run("nats-auth", "--people", str(tmp_path / "people.yaml")).stdout == run("nats-auth").stdout


# --- a real nats-server -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def secret_values(people_file: Path) -> dict[str, str]:
    result = run("secret", "--people", str(people_file), "-o", "json")
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout)["stringData"])


@pytest.fixture(scope="module")
def people_server(
    render: Callable[[str], Manifest],
    nats_files: Callable[[Manifest], dict[str, str]],
    test_tls: Path,
    people_conf: str,
    secret_values: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    """One server of the prod configuration with the people file's auth.conf, the Secret in its environment."""
    files = {**nats_files(render("envs/prod")), "auth.conf": people_conf}
    with single_server(files, tmp_path_factory.mktemp("nats-people"), test_tls, secret_values) as running:
        yield running


def login(server: Server, secret: dict[str, str], user: str) -> str:
    return server.url(user, secret[busauth.password_variable(user)])


@pytest.mark.integration
async def test_a_person_logs_in_with_their_password_and_may_do_only_what_their_role_allows(
    people_server: Server, secret_values: dict[str, str], test_tls: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CA_ENV, str(test_tls / "ca.crt"))
    admin = await connect_watched(login(people_server, secret_values, permissions.ADMIN_USER))
    alice = await connect_watched(login(people_server, secret_values, "alice"))
    vera = await connect_watched(login(people_server, secret_values, "vera"))
    try:
        seen = await live_subscription(admin, subjects.service_commands(ORCHESTRATOR))
        pause_as_alice = subjects.command_by(ORCHESTRATOR, "upgrade.pause", "alice")
        await alice.nc.publish(pause_as_alice, b"{}")  # an operator steers a rollout, in her own name
        assert (await seen.next_msg(timeout=3)).subject == pause_as_alice
        refused = [
            (alice, subjects.command_by(ORCHESTRATOR, "upgrade.start", "alice")),  # an admin's command
            (alice, subjects.command_by(ORCHESTRATOR, "upgrade.pause", "vera")),  # in another's name
            (alice, subjects.command(ORCHESTRATOR, "upgrade.pause")),  # the built-in admin's plain form
            (vera, subjects.command_by(ORCHESTRATOR, "upgrade.pause", "vera")),  # a viewer steers nothing
        ]
        for person, subject in refused:
            await person.nc.publish(subject, b"{}")
            assert await person.denied(f'publish to "{subject}"'), (subject, person.errors)
        await vera.nc.publish(subjects.command_by(ORCHESTRATOR, "upgrade.list", "vera"), b"{}")  # vera reads
        assert (await seen.next_msg(timeout=3)).subject.endswith("upgrade.list.by.vera"), "nothing refused got through"
        connz = people_server.monitor("/connz?auth=true")
        assert {"alice", "vera"} <= {c.get("authorized_user") for c in connz["connections"]}
    finally:
        for connection in (admin, alice, vera):
            await connection.nc.close()


@pytest.mark.integration
async def test_a_wrong_or_another_persons_password_is_refused(
    people_server: Server, secret_values: dict[str, str], test_tls: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CA_ENV, str(test_tls / "ca.crt"))
    for password in (secret_values[busauth.password_variable("vera")], "not-her-password"):
        with pytest.raises(nats.errors.Error) as refused:
            await connect_watched(people_server.url("alice", password))
        assert "authorization violation" in str(refused.value).lower()


@pytest.mark.integration
def test_nats_refuses_a_people_config_whose_password_is_not_in_its_environment(
    people_server: Server, secret_values: dict[str, str], tmp_path: Path
) -> None:
    """Why the person's key goes into the Secret before the overlay is applied: a server (re)starting without it
    refuses its configuration (the rolling restart stops at the first pod; the others keep serving)."""
    conf = people_server.log.parent / "nats.conf"
    environment = {k: v for k, v in secret_values.items() if k != busauth.password_variable("alice")}
    checked = subprocess.run(
        [find_nats_server(), "-t", "-c", str(conf)], env={"POD_NAME": "nats-0", **environment},
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert checked.returncode != 0
    assert "FLOTILLA_BUS_PASSWORD_ALICE" in checked.stdout + checked.stderr
