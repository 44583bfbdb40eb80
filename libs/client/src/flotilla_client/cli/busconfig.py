"""`flotilla bus-config`: the bus authentication of a Kubernetes deployment, as files to commit or apply."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import yaml

from flotilla_client import busauth, peoplefile
from flotilla_client.cli.common import BadUsage, echo
from flotilla_contracts.permissions import ADMIN_USER

if TYPE_CHECKING:
    from flotilla_contracts.roles import Role

SECRET_NAME = "flotilla-bus-auth"
CA_SECRET = "nats-server-tls"  # cert-manager writes ca.crt there (deploy/components/bus-security)
PEOPLE_FILE = "deploy/components/bus-security/people.yaml"


def _people(_ctx: click.Context, _param: click.Parameter, path: Path | None) -> dict[str, Role] | None:
    """The --people option's file as name -> role (None without it); a bad file is a usage error naming the entry."""
    if path is None:
        return None
    try:
        return peoplefile.load(path)
    except peoplefile.PeopleFileError as bad:
        raise BadUsage(f"--people {bad}") from None


namespace_option = click.option(
    "--namespace",
    default="flotilla",
    show_default=True,
    help="Namespace of the Secret: where NATS and the services run.",
)
people_option = click.option(
    "--people",
    type=click.Path(dir_okay=False, path_type=Path),
    callback=_people,
    help=f"YAML list of people and roles, `- {{name: alice, role: operator}}` (the overlay's: {PEOPLE_FILE}).",
)


@click.group("bus-config")
def bus_config() -> None:
    """Bus authentication for Kubernetes: the nats-server template and the Secret that fills it.

    \b
    The production overlay (deploy/envs/prod) runs NATS with a user per service, the auth callout for
    cluster agents and TLS. Its configuration names environment variables; the Secret holds the values.
    """


@bus_config.command("nats-auth")
@people_option
def nats_auth(people: dict[str, Role] | None) -> None:
    """Print nats-server's accounts and authorization blocks with $VARIABLES instead of secrets.

    The policy is flotilla_contracts.permissions, the same one `flotilla up` runs. Each person of --people is a
    user with their role's grant (viewer, operator, admin: commands only as `<command>.by.<name>`) and the
    password $FLOTILLA_BUS_PASSWORD_<NAME>, a key of the Secret flotilla-bus-auth. The output is committed; a
    test fails when it is stale. Regenerate it with:

    \b
      cd deploy/components/bus-security
      flotilla bus-config nats-auth --people people.yaml > auth.conf
    """
    echo(busauth.server_config_template(people))


@bus_config.command("secret")
@namespace_option
@people_option
@click.option(
    "-o",
    "--output",
    type=click.Choice(["yaml", "json"]),
    default="yaml",
    show_default=True,
    help="Manifest format (kubectl reads both).",
)
def secret(namespace: str, people: dict[str, Role] | None, output: str) -> None:
    """Print a new Secret flotilla-bus-auth: fresh bus passwords and the auth-callout key.

    \b
    It holds, as stringData:
      FLOTILLA_BUS_PASSWORD_<USER>               a random password for admin, for each service, for
                                                 registration-revoker (kicks deregistered clusters' connections)
                                                 and for each person of --people
      FLOTILLA_CALLOUT_ISSUER                    the callout account's public key (nats-server reads it)
      FLOTILLA_REGISTRATION_CALLOUT_ISSUER_SEED  its seed, with which registration signs callout answers
    NATS gets all of them (envFrom); each service pod only its own password, registration also the seed
    and the revoker's password.

    \b
    Create it once, before applying the overlay; the values are printed nowhere else:
      flotilla bus-config secret --people deploy/components/bus-security/people.yaml | kubectl create -f -
    `create` refuses to replace an existing Secret, so a second run cannot change the passwords under
    running pods. To rotate them on purpose: the same with `kubectl replace -f -` (and the same --people:
    a person without a key keeps NATS from starting), then restart NATS and every service
    (`kubectl -n flotilla rollout restart statefulset,deployment,daemonset`).
    A person added later gets a password of their own with `flotilla bus-config person NAME`, nobody else's
    changes. Each person connects as the admin does (printed on stderr), with their name and password.
    """
    people = people or {}
    values = busauth.secret_values(busauth.new_auth(), people)
    manifest = secret_manifest(values, namespace)
    if output == "json":
        echo(json.dumps(manifest, indent=2))
    else:
        echo(yaml.safe_dump(manifest, sort_keys=False).rstrip())
    users = [*busauth.STATIC_USERS, *people]
    echo(f"Secret {SECRET_NAME} printed for namespace {namespace} (passwords for {', '.join(users)}).", err=True)
    echo(connect_hint(ADMIN_USER, namespace), err=True)
    if people:
        echo("Each person connects the same way with their own name and key (the CLI acts as them), e.g.:", err=True)
        echo(connect_hint(next(iter(people)), namespace, ca=False), err=True)


@bus_config.command("person")
@click.argument("name")
@namespace_option
@people_option
def person(name: str, namespace: str, people: dict[str, Role] | None) -> None:
    """Print a patch of the Secret flotilla-bus-auth that adds one person's password, nobody else's changed.

    The patch (JSON, on stdout) sets the one key FLOTILLA_BUS_PASSWORD_<NAME> to a fresh password; run it
    again to give that person a new one. With --people, NAME must be listed there. To add alice:

    \b
      1. list her in the people file and regenerate auth.conf (commit both), in deploy/components/bus-security:
           echo '- {name: alice, role: operator}' >> people.yaml
           flotilla bus-config nats-auth --people people.yaml > auth.conf
      2. her password into the Secret, first (a server starting without it refuses its configuration):
           flotilla bus-config person alice --people people.yaml |
             kubectl -n flotilla patch secret flotilla-bus-auth --type merge --patch-file /dev/stdin
      3. kubectl apply -k deploy/envs/prod: auth.conf is in the nats-config ConfigMap, whose name
         carries a hash of its files, so NATS restarts one server at a time (lame duck mode; clients
         reconnect) and each reads the new configuration and the Secret (its environment) at start.
         A SIGHUP reload is not enough: nats-server cannot reload the auth callout's auth_users, and
         the pod's environment is fixed at start. A new password for an existing person (step 2
         alone) needs `kubectl -n flotilla rollout restart statefulset/nats`.
      4. give her the password (read from the Secret) and the CA; she connects as the admin does:
           export FLOTILLA_NATS_URL="tls://alice:<password>@localhost:4222"
    """
    try:
        name = peoplefile.check_person(name)
    except peoplefile.PeopleFileError as bad:
        raise BadUsage(str(bad)) from None
    if people is not None and name not in people:
        raise BadUsage(f"{name} is not in --people: add `- {{name: {name}, role: viewer}}` (or their role) first")
    variable = busauth.password_variable(name)
    encoded = base64.b64encode(busauth.new_password().encode()).decode()
    echo(json.dumps(secret_patch(variable, encoded)))
    echo(
        f"A patch of Secret {SECRET_NAME} setting {variable} only. Apply it, then roll NATS:\n"
        f"  flotilla bus-config person {name} | kubectl -n {namespace} patch secret {SECRET_NAME} "
        "--type merge --patch-file /dev/stdin\n"
        f"  kubectl apply -k deploy/envs/prod   # with {name} in auth.conf; else: "
        f"kubectl -n {namespace} rollout restart statefulset/nats\n"
        f"{connect_hint(name, namespace)}",
        err=True,
    )


def connect_hint(user: str, namespace: str, *, ca: bool = True) -> str:
    """How `user` reaches the bus from outside the cluster: a port-forward, the CA, their URL (the password read
    from the Secret, never printed)."""
    password = (
        f"$(kubectl -n {namespace} get secret {SECRET_NAME} "
        f"-o jsonpath='{{.data.{busauth.password_variable(user)}}}' | base64 -d)"
    )
    lines = [f"The CLI connects as {user}, through `kubectl -n {namespace} port-forward svc/nats 4222`:"]
    if ca:
        ca_file = f"kubectl -n {namespace} get secret {CA_SECRET} -o jsonpath='{{.data.ca\\.crt}}' | base64 -d"
        lines += [f"  {ca_file} > nats-ca.crt", "  export FLOTILLA_NATS_CA=$PWD/nats-ca.crt"]
    lines.append(f'  export FLOTILLA_NATS_URL="tls://{user}:{password}@localhost:4222"')
    return "\n".join(lines)


def secret_patch(variable: str, encoded: str) -> dict[str, Any]:
    """A merge patch of the Secret that sets one key (`data`: base64, as the API server stores it)."""
    return {"data": {variable: encoded}}


def secret_manifest(values: dict[str, str], namespace: str) -> dict[str, Any]:
    """The Kubernetes Secret holding `values` (stringData: the API server encodes them)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": SECRET_NAME,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/name": SECRET_NAME, "app.kubernetes.io/part-of": "flotilla"},
        },
        "type": "Opaque",
        "stringData": values,
    }
