"""`flotilla bus-config`: the Secret it prints and the nats-server template, against the policy `flotilla up` runs."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import nkeys
import pytest
import yaml
from click.testing import CliRunner, Result

from flotilla_client import busauth
from flotilla_client.cli.main import cli
from flotilla_client.natsserver import find_nats_server
from flotilla_contracts.permissions import ADMIN_USER, REVOKER_USER
from flotilla_contracts.subjects import Service

USERS = [ADMIN_USER, *(s.value for s in Service), REVOKER_USER]


def run(*args: str) -> Result:
    result = CliRunner().invoke(cli, ["bus-config", *args])
    assert result.exit_code == 0, result.output
    return result


def secret(*args: str) -> dict[str, Any]:
    return dict(yaml.safe_load(run("secret", *args).stdout))


def test_secret_is_a_kubernetes_secret_with_a_password_for_every_static_user() -> None:
    manifest = secret()
    assert (manifest["apiVersion"], manifest["kind"], manifest["type"]) == ("v1", "Secret", "Opaque")
    assert manifest["metadata"]["name"] == "flotilla-bus-auth" and manifest["metadata"]["namespace"] == "flotilla"
    data = manifest["stringData"]
    expected = {f"FLOTILLA_BUS_PASSWORD_{u.upper().replace('-', '_')}" for u in USERS}
    assert "FLOTILLA_BUS_PASSWORD_UPGRADE_ORCHESTRATOR" in expected
    assert set(data) == expected | {"FLOTILLA_CALLOUT_ISSUER", "FLOTILLA_REGISTRATION_CALLOUT_ISSUER_SEED"}
    passwords = [data[key] for key in expected]
    assert len(set(passwords)) == len(passwords), "each user has its own password"


def test_issuer_is_the_public_key_of_the_seed_registration_signs_with() -> None:
    data = secret()["stringData"]
    seed = data["FLOTILLA_REGISTRATION_CALLOUT_ISSUER_SEED"]
    assert seed.startswith("SA"), "an account seed (what the registration service accepts)"
    assert nkeys.from_seed(seed.encode()).public_key.decode() == data["FLOTILLA_CALLOUT_ISSUER"]


def test_every_run_makes_new_secrets() -> None:
    first, second = secret()["stringData"], secret()["stringData"]
    assert set(first) == set(second)
    assert all(first[key] != second[key] for key in first), "a fresh Secret shares nothing with the last one"


def test_json_output_and_namespace() -> None:
    manifest = json.loads(run("secret", "--namespace", "fleet-system", "-o", "json").stdout)
    assert manifest["metadata"]["namespace"] == "fleet-system" and manifest["kind"] == "Secret"


def test_stdout_is_only_the_manifest_and_the_hint_goes_to_stderr() -> None:
    result = run("secret")
    password = yaml.safe_load(result.stdout)["stringData"]["FLOTILLA_BUS_PASSWORD_ADMIN"]
    assert "kubectl" not in result.stdout
    assert "FLOTILLA_NATS_URL" in result.stderr and "tls://admin:" in result.stderr
    assert password not in result.stderr, "the hint reads the password from the Secret, it never prints it"


def test_passwords_stay_themselves_when_nats_server_substitutes_them(tmp_path: Path) -> None:
    """nats-server parses a $VARIABLE's value as configuration; the generated ones must come out unchanged."""
    for _ in range(50):
        assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]{31}", busauth.new_password())
    values = busauth.secret_values(busauth.new_auth())
    conf = tmp_path / "nats.conf"
    conf.write_text(busauth.server_config_template())
    checked = subprocess.run(
        [find_nats_server(), "-t", "-c", str(conf)], capture_output=True, text=True, timeout=30, env=values
    )
    assert checked.returncode == 0, checked.stderr


def test_template_is_server_config_with_variables_in_place_of_the_secrets() -> None:
    """One policy: substituting the Secret's values into the template gives exactly what `flotilla up` runs."""
    auth = busauth.new_auth()
    values = busauth.secret_values(auth)
    template = run("nats-auth").stdout
    assert not any(value in template for value in values.values()), "no secret in the committed template"
    filled = re.sub(r"\$([A-Z][A-Z0-9_]+)\b", lambda m: values.get(m.group(1), m.group(0)), template)
    for user, password in auth.passwords.items():
        filled = filled.replace(f"password: {password},", f'password: "{password}",', 1)
        assert f'{{ user: "{user}", password: "{password}",' in filled
    body = "\n".join(line for line in filled.splitlines() if not line.startswith("#"))
    assert body == busauth.server_config(auth)


@pytest.mark.parametrize("user", USERS)
def test_password_variable_names(user: str) -> None:
    variable = busauth.password_variable(user)
    assert re.fullmatch(r"FLOTILLA_BUS_PASSWORD_[A-Z_]+", variable)
    assert variable.removeprefix("FLOTILLA_BUS_PASSWORD_").lower().replace("_", "-") == user


def test_help_names_the_one_step() -> None:
    people = "--people deploy/components/bus-security/people.yaml"
    assert f"flotilla bus-config secret {people} | kubectl create -f -" in run("secret", "--help").stdout
    assert "nats-auth --people people.yaml > auth.conf" in run("nats-auth", "--help").stdout
