"""The bus credentials and the nats-server authorization they go with, for `flotilla up` and Kubernetes.

`flotilla up` creates them once per state folder (`<state>/auth/bus.json`, mode 0600): a random password
for each service and for `admin` (the CLI), and the account key pair the registration service signs
auth-callout answers with. The nats-server configuration gives each service the permissions of
`flotilla_contracts.permissions` and sends every other connection (cluster agents) to the callout.

In Kubernetes the same configuration is committed as a template (`server_config_template`) that names
environment variables instead of values; `flotilla bus-config secret` makes the Secret that fills them.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import string
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import msgspec

from flotilla_contracts import permissions, roles
from flotilla_contracts.permissions import ADMIN_USER, FLEET_ACCOUNT, REVOKER_USER, SYSTEM_ACCOUNT, Grant
from flotilla_contracts.roles import Role
from flotilla_contracts.subjects import Service
from flotilla_runtime.natsconn import with_user, without_user
from flotilla_runtime.settings import env_prefix

__all__ = [
    "BusAuth",
    "Person",
    "admin_url",
    "create",
    "load",
    "new_auth",
    "password_variable",
    "revoker_url",
    "secret_values",
    "server_config",
    "server_config_template",
    "service_url",
    "with_user",
    "without_user",
]

AUTH_FILE = "bus.json"
# Every static user of the server configuration: the CLI, each service, and registration's system-account
# user that kicks a deregistered cluster's connections. Everyone else is a cluster agent and goes to the
# auth callout.
STATIC_USERS: tuple[str, ...] = (ADMIN_USER, *(s.value for s in Service), REVOKER_USER)
PASSWORD_VARIABLE_PREFIX = "FLOTILLA_BUS_PASSWORD_"
ISSUER_VARIABLE = "FLOTILLA_CALLOUT_ISSUER"  # the callout issuer's public key, read by nats-server
ISSUER_SEED_VARIABLE = f"{env_prefix(Service.REGISTRATION.value)}CALLOUT_ISSUER_SEED"  # its seed, registration's
_PASSWORD_ALPHABET = string.ascii_letters + string.digits


class Person(msgspec.Struct, kw_only=True, frozen=True):
    """A person's bus user (`flotilla user add`): its name, role and password (`<state>/users/<name>.json`)."""

    name: str
    role: Role
    password: str


class BusAuth(msgspec.Struct, kw_only=True):
    """Passwords by user, and the callout issuer's account seed (the server knows its public key)."""

    passwords: dict[str, str]
    callout_seed: str

    @property
    def callout_issuer(self) -> str:
        import nkeys  # nacl: a tenth of a second, which a CLI command that only reads does without

        return str(nkeys.from_seed(self.callout_seed.encode()).public_key.decode())


def auth_path(state_dir: Path) -> Path:
    return state_dir / "auth" / AUTH_FILE


def new_account_seed() -> str:
    import nkeys

    return str(nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_ACCOUNT).decode())


def new_password() -> str:
    """32 random letters and digits (about 190 bits), the first a letter.

    nats-server parses the value of a `$VARIABLE` from the environment as configuration: `1e5` would become
    a number, `true` a boolean, `-x` an error and `ab#c` the string `ab` (the rest a comment). A letter
    followed by letters and digits stays the string it is, and needs no escaping in a URL either.
    """
    return secrets.choice(string.ascii_letters) + "".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(31))


def new_auth() -> BusAuth:
    """Fresh credentials: a password for every static user and a new callout account key."""
    return BusAuth(passwords={u: new_password() for u in STATIC_USERS}, callout_seed=new_account_seed())


def create(state_dir: Path) -> BusAuth:
    """Fresh credentials, written readable by the owner only."""
    auth = new_auth()
    _write(state_dir, auth)
    return auth


def _write(state_dir: Path, auth: BusAuth) -> None:
    path = auth_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(msgspec.json.encode(auth))
    os.replace(path.with_suffix(".tmp"), path)


def load(state_dir: Path) -> BusAuth | None:
    """The credentials of a state folder, or None when its fleet runs without authentication.

    A folder made before a static user existed gets a password for it, kept from then on."""
    try:
        auth = msgspec.json.decode(auth_path(state_dir).read_bytes(), type=BusAuth)
    except FileNotFoundError:
        return None
    missing = [user for user in STATIC_USERS if user not in auth.passwords]
    if missing:
        auth.passwords.update({user: new_password() for user in missing})
        _write(state_dir, auth)
    return auth


def load_or_create(state_dir: Path) -> BusAuth:
    return load(state_dir) or create(state_dir)


def service_url(url: str, auth: BusAuth | None, service: Service) -> str:
    return url if auth is None else with_user(url, service.value, auth.passwords[service.value])


def revoker_url(url: str, auth: BusAuth) -> str:
    """Registration's system-account URL (it kicks a deregistered cluster's connections)."""
    return with_user(url, REVOKER_USER, auth.passwords[REVOKER_USER])


def admin_url(url: str, auth: BusAuth | None) -> str:
    return url if auth is None else with_user(url, ADMIN_USER, auth.passwords[ADMIN_USER])


def _q(value: str) -> str:
    return json.dumps(value)  # a quoted string: no `$variable` expansion inside nats-server config quotes


def _user_block(user: str, password: str, grant: Grant) -> str:
    """One user of an account; `password` is already configuration text (quoted, or a `$VARIABLE`)."""

    def allow(subjects: tuple[str, ...]) -> str:
        return "[" + ", ".join(_q(s) for s in subjects) + "]"

    responses = "\n        allow_responses: true" if grant.responses else ""
    return (
        f"      {{ user: {_q(user)}, password: {password}, permissions: {{\n"
        f"        publish: {{ allow: {allow(grant.publish)} }}\n"
        f"        subscribe: {{ allow: {allow(grant.subscribe)} }}{responses}\n"
        "      } }"
    )


def _authorization(passwords: Mapping[str, str], issuer: str, people: Sequence[tuple[str, Role, str]] = ()) -> str:
    """The accounts and authorization blocks, with each password and the issuer as configuration text; a
    person's user (name, role, password text: `flotilla user add`, a people file) gets the grant of its role."""
    users = [_user_block(ADMIN_USER, passwords[ADMIN_USER], permissions.admin_grant())]
    users += [_user_block(s.value, passwords[s.value], permissions.service_grant(s)) for s in Service]
    users += [_user_block(name, password, roles.role_grant(role, name)) for name, role, password in people]
    static = ", ".join(_q(u) for u in [*passwords, *(name for name, _, _ in people)])
    return "\n".join(
        [
            "accounts {",
            f"  {FLEET_ACCOUNT} {{",
            "    jetstream: enabled",
            "    users: [",
            ",\n".join(users),
            "    ]",
            "  }",
            f"  {SYSTEM_ACCOUNT} {{",
            "    users: [",
            _user_block(REVOKER_USER, passwords[REVOKER_USER], permissions.revoker_grant()) + ",",
            # Nobody holds this key: it only makes the server send a nonce, which nodes sign with their keys.
            f'      {{ nkey: {permissions.NONCE_NKEY}, permissions: {{ publish: {{ deny: ">" }}, '
            'subscribe: { deny: ">" } } }',
            "    ]",
            "  }",
            "}",
            f"system_account: {SYSTEM_ACCOUNT}",
            "authorization {",
            "  timeout: 5",
            "  auth_callout {",
            f"    issuer: {issuer}",
            f"    auth_users: [ {static} ]",
            f"    account: {FLEET_ACCOUNT}",
            "  }",
            "}",
        ]
    )


def server_config(auth: BusAuth, people: Sequence[Person] = ()) -> str:
    """The accounts and authorization blocks of nats-server's configuration, with these credentials in it."""
    passwords = {user: _q(password) for user, password in auth.passwords.items()}
    return _authorization(passwords, auth.callout_issuer, [(p.name, p.role, _q(p.password)) for p in people])


def password_variable(user: str) -> str:
    """`FLOTILLA_BUS_PASSWORD_<USER>`: the environment variable holding a static user's password."""
    return PASSWORD_VARIABLE_PREFIX + user.upper().replace("-", "_")


TEMPLATE_HEADER = """\
# Generated by `flotilla bus-config nats-auth --people people.yaml` from flotilla_contracts.permissions and the
# people file: do not edit, regenerate. Who may connect and what each may publish and subscribe (docs/security.md).
# nats-server substitutes each $VARIABLE from its environment: the Secret flotilla-bus-auth provides them
# (`flotilla bus-config secret --people people.yaml`; `flotilla bus-config person NAME` for one person added later)."""


def server_config_template(people: Mapping[str, Role] | None = None) -> str:
    """`server_config` with environment-variable references instead of the secrets, for the Kubernetes overlay;
    `people` (name -> role, a people file's) get `$FLOTILLA_BUS_PASSWORD_<NAME>` passwords like the static users.

    Unquoted `$NAME` values are substituted by nats-server from its environment at start (and reload).
    """
    passwords = {user: f"${password_variable(user)}" for user in STATIC_USERS}
    named = [(name, role, f"${password_variable(name)}") for name, role in (people or {}).items()]
    return TEMPLATE_HEADER + "\n" + _authorization(passwords, f"${ISSUER_VARIABLE}", named)


def secret_values(auth: BusAuth, people: Iterable[str] = ()) -> dict[str, str]:
    """The variables `server_config_template` and the services read: passwords, the issuer key and its seed; a
    fresh password for each of `people` (the names of a people file)."""
    values = {password_variable(user): password for user, password in auth.passwords.items()}
    values.update({password_variable(name): new_password() for name in people})
    values[ISSUER_VARIABLE] = auth.callout_issuer
    values[ISSUER_SEED_VARIABLE] = auth.callout_seed
    return values


# --- TLS on the client port (`flotilla up --tls`) ------------------------------------------------------------


class TlsError(RuntimeError):
    """The local certificates could not be made (openssl missing or failing)."""


def tls_dir(state_dir: Path) -> Path:
    return state_dir / "auth" / "tls"


def make_tls(state_dir: Path, host: str) -> tuple[Path, Path, Path]:
    """(CA, server certificate, server key) for `host`, made once with openssl and kept in the state folder."""
    folder = tls_dir(state_dir)
    ca, cert, key = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    if ca.exists() and cert.exists() and key.exists():
        return ca, cert, key
    if shutil.which("openssl") is None:
        raise TlsError("--tls needs the openssl command to make a local CA and certificate; install openssl")
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    san = folder / "san.ext"
    san.write_text(f"subjectAltName=IP:{host},DNS:localhost\n" if _is_ip(host) else f"subjectAltName=DNS:{host}\n")
    steps = [
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "825",
         "-subj", "/CN=flotilla local CA"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", f"/CN={host}"],
        ["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
         "-out", "server.pem", "-days", "825", "-extfile", "san.ext"],
    ]  # fmt: skip
    for args in steps:
        done = subprocess.run(["openssl", *args], cwd=folder, capture_output=True, text=True, check=False, umask=0o077)
        if done.returncode != 0:
            raise TlsError(f"openssl {args[0]} failed: {done.stderr.strip()[-300:]}")
    for private in ("ca.key", "server.key"):
        os.chmod(folder / private, 0o600)
    return ca, cert, key


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def tls_config(cert: Path, key: Path) -> str:
    """nats-server's TLS block for the client port."""
    return f"tls {{\n  cert_file: {_q(str(cert))}\n  key_file: {_q(str(key))}\n  timeout: 5\n}}"


def tls_ca(state_dir: Path) -> Path | None:
    """The local CA when `flotilla up --tls` made one for this state folder."""
    ca = tls_dir(state_dir) / "ca.pem"
    return ca if ca.exists() else None
