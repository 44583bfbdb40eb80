"""`flotilla demo`: the main job on one machine, end to end, for a person to watch."""

from __future__ import annotations

import click

from flotilla_client import localfleet
from flotilla_client.cli import local
from flotilla_client.cli.common import CliContext, echo


@click.command()
@click.pass_context
def demo(ctx: click.Context) -> None:
    """Run the local fleet and show it: nats-server and the five services, each its own process.

    Reuses a fleet already running from the state folder. Leaves it running afterwards so you
    can look around; `flotilla down` (or `make down`) stops everything.
    """
    obj: CliContext = ctx.obj
    if localfleet.running(obj.state_dir):
        echo(f"a local fleet is already running from {obj.state_dir.resolve()}; showing it")
    else:
        ctx.invoke(local.up)
    echo("")
    ctx.invoke(local.status)
    echo("\nWhat to try next:")
    for command, why in (
        ("status -o json", "the same, for scripts"),
        ("token create --ttl 1h", "a join token for a cluster agent"),
        ("clusters list", "the clusters of the fleet"),
        ("events --follow", "every fact the services publish, live"),
        ("publish fleet.v1.cmd.registration.info '{}' --request", "talk to a service directly"),
        ("logs registration --follow", "a service's JSON log"),
        ("down", "stop everything"),
    ):
        echo(f"  {obj.hint(command):<62} {why}")
