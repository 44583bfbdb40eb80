"""`flotilla user`: people's bus users of the local fleet, each with a role the server enforces."""

from __future__ import annotations

import click

from flotilla_client.cli.common import CliContext, Failure, echo, run
from flotilla_client.cli.output import Column, Listing, output_option, show_list
from flotilla_contracts.roles import Role

pass_cli = click.make_pass_decorator(CliContext)
ROLES = [r.value for r in Role]
USER_LISTING = Listing(
    "user",
    "users",
    (Column("NAME", "name"), Column("ROLE", lambda p: p.role.value)),
    lambda p: p.name,
    plain=lambda p: {"name": p.name, "role": p.role.value},  # never the password
)


@click.group()
def user() -> None:
    """People's bus users: viewer (read), operator (read, steer rollouts), admin (everything).

    The bus enforces the role: a command the role does not allow is refused by nats-server.
    """


def _running_url(obj: CliContext) -> str | None:
    """The NATS URL of the fleet `flotilla up` runs from this state folder, when it runs nats-server itself."""
    from flotilla_client import runfile

    info = runfile.load(obj.state_dir)
    return info.nats.url if info is not None and info.nats.pid else None


def _until_services_answer(obj: CliContext) -> None:
    """After nats-server's restart: until every service answers through it again (they reconnect on their own)."""
    from flotilla_client import runfile
    from flotilla_client.cli.supervision import until_answering
    from flotilla_client.users import RESTART_TIMEOUT_S

    info = runfile.load(obj.state_dir)
    expected = {s.name: s.instance_id for s in info.services} if info else {}
    run(lambda: until_answering(obj.server_url(), expected, RESTART_TIMEOUT_S))


@user.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), required=True, help="What the user may do on the bus.")
@pass_cli
def user_add(obj: CliContext, name: str, role: str) -> None:
    """Add a person's bus user with ROLE (or give an existing one this role); writes their credentials file.

    \b
    Examples:
      flotilla user add alice --role viewer
      flotilla user add bob --role operator
      flotilla --user alice clusters list
    """
    from flotilla_client import users

    person, new = users.add(obj.state_dir, name, Role(role))
    what = users.apply(obj.state_dir, names_changed=new)
    path = users.users_dir(obj.state_dir) / f"{name}.json"
    url = _running_url(obj)
    if url is not None and not run(lambda: users.await_login(url, person, admitted=True)):
        raise Failure(f"{what}, but it does not admit {name} yet; see {obj.state_dir / 'logs' / 'nats-server.log'}")
    if url is not None and new:
        _until_services_answer(obj)
    echo(f"{'added' if new else 'updated'} user {name} (role {role}); credentials in {path} (0600); {what}")
    echo(f"use it with: {obj.hint(f'--user {name} status')}  (or FLOTILLA_USER={name})")


@user.command("list")
@output_option("table", "json", "yaml", "name")
@pass_cli
def user_list(obj: CliContext, output: str) -> None:
    """The people's bus users of this state folder and their roles (the built-in admin is not listed).

    \b
    Examples:
      flotilla user list
      flotilla user list -o json
    """
    from flotilla_client import users

    show_list(users.people(obj.state_dir), output, USER_LISTING)


@user.command("remove")
@click.argument("name")
@pass_cli
def user_remove(obj: CliContext, name: str) -> None:
    """Remove a person's bus user: they can no longer connect, and their open connections are closed.

    \b
    Examples:
      flotilla user remove alice
    """
    from flotilla_client import users

    person = users.load(obj.state_dir, name)
    users.remove(obj.state_dir, name)
    what = users.apply(obj.state_dir, names_changed=True)
    url = _running_url(obj)
    if url is not None and not run(lambda: users.await_login(url, person, admitted=False)):
        raise Failure(f"{what}, but it still admits {name}; see {obj.state_dir / 'logs' / 'nats-server.log'}")
    if url is not None:
        _until_services_answer(obj)
    echo(f"removed user {name}; {what}")
