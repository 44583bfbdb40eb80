"""People's bus users of a local fleet (`flotilla user`): their credentials files and the server's authorization.

Each person is a static nats-server user with the grant of a role (flotilla_contracts.roles.Role), kept in
`<state>/users/<name>.json` (0600): the file the CLI logs in with (`--user NAME`). The authorization part of
the server's configuration (`<state>/nats/auth.conf`, included by nats-server.conf) is written from the state
folder's bus credentials and these files. nats-server rereads it on SIGHUP, but it cannot reload the auth
callout's `auth_users` (the users that bypass the callout, as people do): adding or removing a person restarts
nats-server through the supervisor; a new role for an existing person is a reload.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import msgspec

from flotilla_client import busauth, runfile
from flotilla_client.busauth import Person
from flotilla_client.errors import LocalFleetError
from flotilla_contracts.permissions import CLUSTER_USER_PREFIX, JOIN_USER_PREFIX
from flotilla_contracts.roles import Role

USERS_DIR = "users"
AUTH_CONFIG = "auth.conf"  # beside nats-server.conf, which includes it
RESTART_TIMEOUT_S = 30.0
_NAME = re.compile(r"[a-z][a-z0-9-]{0,31}")
# Names a person cannot take: the static users (a service, admin, the revoker) and the agents' user prefixes
# (a person `c` would own the inbox prefix `_INBOX.c`, every cluster agent's).
RESERVED = frozenset({*busauth.STATIC_USERS, CLUSTER_USER_PREFIX, JOIN_USER_PREFIX})


def users_dir(state_dir: Path) -> Path:
    return state_dir / USERS_DIR


def auth_config_path(state_dir: Path) -> Path:
    return state_dir / "nats" / AUTH_CONFIG


def check_name(name: str) -> str:
    """A person's user name: lower-case letters, digits and dashes, a letter first, not a reserved name."""
    if not _NAME.fullmatch(name):
        raise LocalFleetError(f"user name {name!r}: use 1-32 lower-case letters, digits and dashes, a letter first")
    if name in RESERVED:
        raise LocalFleetError(f"user name {name!r} is reserved (a service, the built-in admin or an agent prefix)")
    return name


def is_person(name: str) -> bool:
    """Whether a bus user name is a person's (not a service, the built-in admin or an agent)."""
    return bool(_NAME.fullmatch(name)) and name not in RESERVED


def person_in_url(url: str) -> str:
    """The person a NATS URL logs in as (`nats://alice:...@host`), or "" for the built-in admin, a service or
    no user: a person sends commands in their own name (subjects.command_by)."""
    from urllib.parse import unquote, urlsplit

    name = unquote(urlsplit(url).username or "")
    return name if is_person(name) else ""


def _path(state_dir: Path, name: str) -> Path:
    return users_dir(state_dir) / f"{check_name(name)}.json"


def people(state_dir: Path) -> list[Person]:
    """Every person of this state folder, by name."""
    folder = users_dir(state_dir)
    found = [msgspec.json.decode(p.read_bytes(), type=Person) for p in sorted(folder.glob("*.json"))]
    return [p for p in found if _NAME.fullmatch(p.name)]


def load(state_dir: Path, name: str) -> Person:
    """The person `name`, or an error saying how to add them."""
    try:
        return msgspec.json.decode(_path(state_dir, name).read_bytes(), type=Person)
    except FileNotFoundError:
        raise LocalFleetError(
            f"no user {name!r} in {users_dir(state_dir)}: an admin adds one with "
            f"`flotilla user add {name} --role viewer` (or give --state-dir of the fleet that has it)"
        ) from None


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def add(state_dir: Path, name: str, role: Role) -> tuple[Person, bool]:
    """(the person, whether they are new): a new person gets a fresh password; an existing one keeps theirs and
    takes this role."""
    path = _path(state_dir, name)
    try:
        old = msgspec.json.decode(path.read_bytes(), type=Person)
    except FileNotFoundError:
        old = None
    person = Person(name=name, role=role, password=old.password if old else busauth.new_password())
    _write_private(path, msgspec.json.encode(person))
    return person, old is None


def remove(state_dir: Path, name: str) -> bool:
    """Forget `name`'s credentials; False when there was no such person."""
    try:
        _path(state_dir, name).unlink()
    except FileNotFoundError:
        return False
    return True


def write_auth_config(state_dir: Path, auth: busauth.BusAuth) -> Path:
    """The server's authorization (services, admin, agents' callout, every person) into `nats/auth.conf`."""
    path = auth_config_path(state_dir)
    _write_private(path, (busauth.server_config(auth, people(state_dir)) + "\n").encode())
    return path


def apply(state_dir: Path, names_changed: bool) -> str:
    """Rewrite the authorization of this state folder's fleet and have a running nats-server take it; says what
    happened. A fleet that is not running takes it at its next `flotilla up`.

    A new role for an existing person is reloaded (SIGHUP, connections stay). A person added or removed changes
    the auth callout's `auth_users`, which nats-server cannot reload ("config reload not supported for
    AuthCallout"): then the supervisor restarts nats-server (same port and JetStream folder; every client
    reconnects, as after any server restart)."""
    auth = busauth.load(state_dir)
    if auth is None:
        return f"saved; {state_dir} has no bus credentials yet: `flotilla up` creates them and admits this user"
    write_auth_config(state_dir, auth)
    info = runfile.load(state_dir)
    if info is None or not info.nats.pid:
        if info is not None and info.nats.external:
            server = busauth.without_user(info.nats.url)
            return f"saved; the NATS server at {server} is not this fleet's: give it {auth_config_path(state_dir)}"
        return "saved; the fleet is not running: its next `flotilla up` admits this user"
    if names_changed:
        from flotilla_client import localfleet

        reply = localfleet.restart(state_dir, localfleet.NATS_SERVER, RESTART_TIMEOUT_S)
        return f"nats-server restarted with it (pid {reply.old_pid or '-'} -> {reply.pid}: it cannot reload auth_users)"
    reloaded, missing = [], []
    for member in runfile.bus_servers(info):  # every server of the fleet holds the people (`--bus-servers`)
        try:
            if not member.pid:
                raise ProcessLookupError
            os.kill(member.pid, signal.SIGHUP)  # nats-server reloads its configuration, clients stay connected
            reloaded.append(f"{member.name} (pid {member.pid})")
        except ProcessLookupError:
            missing.append(member.name)
    said = f"{', '.join(reloaded)} reloaded its configuration" if reloaded else "saved"
    if missing:
        said += f"; {', '.join(missing)} not running (its supervisor restarts it with this configuration)"
    return said


async def can_log_in(url: str, person: Person) -> bool:
    """Whether the server at `url` admits `person` now (one connection attempt, closed at once)."""
    from nats.errors import Error as NatsError

    from flotilla_runtime import logins
    from flotilla_runtime.natsconn import connect_options, with_user

    async def quiet(_error: Exception) -> None:
        return None

    login = with_user(url, person.name, person.password)
    try:
        nc = await logins.connect(
            login, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2, error_cb=quiet,
            **connect_options(login),
        )  # fmt: skip
    except (NatsError, OSError, TimeoutError):
        return False
    await nc.close()
    return True


async def await_login(url: str, person: Person, admitted: bool, timeout_s: float = 10.0) -> bool:
    """Until the server admits `person` (or, `admitted` False, refuses them): it reloads after SIGHUP on its own
    time. False when it did not within `timeout_s`."""
    import asyncio

    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while await can_log_in(url, person) != admitted:
        if loop.time() > end:
            return False
        await asyncio.sleep(0.05)  # the next attempt; each one is a new connection
    return True
