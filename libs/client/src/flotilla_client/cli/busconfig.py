"""`flotilla bus-config`: the bus authentication of a Kubernetes deployment, as files to commit or apply."""

from __future__ import annotations

import json
from typing import Any

import click
import yaml

from flotilla_client import busauth
from flotilla_client.cli.common import echo
from flotilla_contracts.permissions import ADMIN_USER

SECRET_NAME = "flotilla-bus-auth"
CA_SECRET = "nats-server-tls"  # cert-manager writes ca.crt there (deploy/components/bus-security)


@click.group("bus-config")
def bus_config() -> None:
    """Bus authentication for Kubernetes: the nats-server template and the Secret that fills it.

    \b
    The production overlay (deploy/envs/prod) runs NATS with a user per service, the auth callout for
    cluster agents and TLS. Its configuration names environment variables; the Secret holds the values.
    """


@bus_config.command("nats-auth")
def nats_auth() -> None:
    """Print nats-server's accounts and authorization blocks with $VARIABLES instead of secrets.

    The policy is flotilla_contracts.permissions, the same one `flotilla up` runs. The output is committed;
    a test fails when it is stale. Regenerate it with:

    \b
      flotilla bus-config nats-auth > deploy/components/bus-security/auth.conf
    """
    echo(busauth.server_config_template())


@bus_config.command("secret")
@click.option(
    "--namespace",
    default="flotilla",
    show_default=True,
    help="Namespace of the Secret: where NATS and the services run.",
)
@click.option(
    "-o",
    "--output",
    type=click.Choice(["yaml", "json"]),
    default="yaml",
    show_default=True,
    help="Manifest format (kubectl reads both).",
)
def secret(namespace: str, output: str) -> None:
    """Print a new Secret flotilla-bus-auth: fresh bus passwords and the auth-callout key.

    \b
    It holds, as stringData:
      FLOTILLA_BUS_PASSWORD_<USER>               a random password for admin, for each service and for
                                                 registration-revoker (kicks deregistered clusters' connections)
      FLOTILLA_CALLOUT_ISSUER                    the callout account's public key (nats-server reads it)
      FLOTILLA_REGISTRATION_CALLOUT_ISSUER_SEED  its seed, with which registration signs callout answers
    NATS gets all of them (envFrom); each service pod only its own password, registration also the seed
    and the revoker's password.

    \b
    Create it once, before applying the overlay; the values are printed nowhere else:
      flotilla bus-config secret | kubectl create -f -
    `create` refuses to replace an existing Secret, so a second run cannot change the passwords under
    running pods. To rotate them on purpose: `flotilla bus-config secret | kubectl replace -f -`, then
    restart NATS and every service (`kubectl -n flotilla rollout restart statefulset,deployment,daemonset`).
    """
    values = busauth.secret_values(busauth.new_auth())
    manifest = secret_manifest(values, namespace)
    if output == "json":
        echo(json.dumps(manifest, indent=2))
    else:
        echo(yaml.safe_dump(manifest, sort_keys=False).rstrip())
    user = ADMIN_USER
    password = (
        f"$(kubectl -n {namespace} get secret {SECRET_NAME} "
        f"-o jsonpath='{{.data.{busauth.password_variable(user)}}}' | base64 -d)"
    )
    ca = f"kubectl -n {namespace} get secret {CA_SECRET} -o jsonpath='{{.data.ca\\.crt}}' | base64 -d > nats-ca.crt"
    echo(
        f"Secret {SECRET_NAME} printed for namespace {namespace} (passwords for {', '.join(busauth.STATIC_USERS)}).\n"
        f"The CLI connects as {user}, through `kubectl -n {namespace} port-forward svc/nats 4222`:\n"
        f"  {ca}\n"
        f"  export FLOTILLA_NATS_CA=$PWD/nats-ca.crt\n"
        f'  export FLOTILLA_NATS_URL="tls://{user}:{password}@localhost:4222"',
        err=True,
    )


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
