"""The `flotilla` root command: global options, error handling, and the command modules it gathers."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from flotilla_client.cli import (
    bus,
    busconfig,
    demo,
    fleet,
    health,
    kube,
    local,
    sim,
    subscriptions,
    supervision,
    tokens,
    upgrade,
)
from flotilla_client.cli.common import DEFAULT_STATE_DIR, CliContext, Failure, cli_version
from flotilla_client.errors import FlotillaClientError


class FlotillaGroup(click.Group):
    """Turns the library's errors into one line on stderr and Ctrl-C into a quiet exit."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FlotillaClientError as exc:
            raise Failure(str(exc)) from None
        except KeyboardInterrupt:
            raise SystemExit(130) from None


@click.group(cls=FlotillaGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--server",
    envvar="FLOTILLA_NATS_URL",
    metavar="URL",
    help="NATS URL of the fleet [env FLOTILLA_NATS_URL; default: the one `flotilla up` recorded, "
    "else nats://127.0.0.1:4222]. With `up`: use this NATS instead of starting one.",
)
@click.option(
    "--state-dir",
    envvar="FLOTILLA_STATE_DIR",
    default=DEFAULT_STATE_DIR,
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder of the local fleet: NATS data, service state, logs, run.json [env FLOTILLA_STATE_DIR].",
)
@click.option("-v", "--verbose", is_flag=True, help="Log what the client does (debug) on stderr.")
@click.option(
    "--trace",
    is_flag=True,
    envvar="FLOTILLA_TRACE",
    help="Print the trace id of each command on stderr (with a Jaeger link when FLOTILLA_JAEGER_URL is set); "
    "spans are exported when OTEL_EXPORTER_OTLP_ENDPOINT is set.",
)
@click.version_option(cli_version(), prog_name="flotilla")
@click.pass_context
def cli(ctx: click.Context, server: str | None, state_dir: Path, verbose: bool, trace: bool) -> None:
    """Flotilla: a fleet manager for Kubernetes clusters, driven over NATS.

    \b
    Start a local fleet, look at it, stop it:
      flotilla up
      flotilla status
      flotilla events --follow
      flotilla down
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="flotilla: %(message)s")
    given = ctx.get_parameter_source("state_dir") is not click.core.ParameterSource.DEFAULT
    ctx.obj = CliContext(state_dir=state_dir, server_flag=server or None, state_dir_given=given, trace=trace)


for command in (
    demo.demo,
    local.up,
    local.down,
    local.status,
    local.logs,
    supervision.restart,
    bus.events,
    bus.publish,
    busconfig.bus_config,
    tokens.token,
    fleet.clusters,
    fleet.nodes,
    health.health,
    kube.kube,
    sim.sim,
    subscriptions.subscriptions,
    upgrade.upgrade,
):
    cli.add_command(command)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="flotilla")
