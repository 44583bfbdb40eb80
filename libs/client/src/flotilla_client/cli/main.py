"""The `flotilla` root command: global options, error handling, and the command modules it gathers.

A command's module is imported only when that command runs (or `--help` lists them all): `flotilla --version`
imports click and nothing of NATS, and a listing no more than it needs (docs/cli.md, start-up time).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from flotilla_client.errors import FlotillaClientError

DEFAULT_STATE_DIR = ".flotilla"

# Every top-level command: its name, then the module of flotilla_client.cli and the attribute that hold it.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "demo"),
    "up": ("local", "up"),
    "down": ("local", "down"),
    "status": ("local", "status"),
    "logs": ("local", "logs"),
    "restart": ("supervision", "restart"),
    "events": ("bus", "events"),
    "audit": ("audit", "audit"),
    "publish": ("bus", "publish"),
    "bus-config": ("busconfig", "bus_config"),
    "dashboard": ("dashboard", "dashboard"),
    "token": ("tokens", "token"),
    "clusters": ("fleet", "clusters"),
    "nodes": ("nodes", "nodes"),
    "health": ("health", "health"),
    "kube": ("kube", "kube"),
    "sim": ("sim", "sim"),
    "subscriptions": ("subscriptions", "subscriptions"),
    "upgrade": ("upgrade", "upgrade"),
    "user": ("users", "user"),
}


def load_command(name: str) -> click.Command:
    """The command `name` (a key of COMMANDS), importing its module now."""
    module, attribute = COMMANDS[name]
    command = getattr(importlib.import_module(f"flotilla_client.cli.{module}"), attribute)
    assert isinstance(command, click.Command)
    return command


class FlotillaGroup(click.Group):
    """Loads a command's module when it is used; turns the library's errors into one line on stderr and Ctrl-C
    into a quiet exit."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return load_command(cmd_name) if cmd_name in COMMANDS else None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FlotillaClientError as exc:
            from flotilla_client.cli.common import Failure, explain_refusal

            raise Failure(explain_refusal(ctx, exc)) from None
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
@click.option(
    "--user",
    envvar="FLOTILLA_USER",
    metavar="NAME",
    help="Act as this person's bus user (`flotilla user add`; its credentials are in <state-dir>/users/NAME.json) "
    "instead of the built-in admin [env FLOTILLA_USER].",
)
@click.option("-v", "--verbose", is_flag=True, help="Log what the client does (debug) on stderr.")
@click.option(
    "--trace",
    is_flag=True,
    envvar="FLOTILLA_TRACE",
    help="Print the trace id of each command on stderr (with a Jaeger link when FLOTILLA_JAEGER_URL is set); "
    "spans are exported when OTEL_EXPORTER_OTLP_ENDPOINT is set.",
)
@click.version_option(package_name="flotilla-client", prog_name="flotilla")
@click.pass_context
def cli(ctx: click.Context, server: str | None, state_dir: Path, user: str | None, verbose: bool, trace: bool) -> None:
    """Flotilla: a fleet manager for Kubernetes clusters, driven over NATS.

    \b
    Start a local fleet, look at it, stop it:
      flotilla up
      flotilla status
      flotilla events --follow
      flotilla down
    """
    from flotilla_client.cli.common import CliContext  # not before: `--version` ends before this runs

    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="flotilla: %(message)s")
    given = ctx.get_parameter_source("state_dir") is not click.core.ParameterSource.DEFAULT
    ctx.obj = CliContext(
        state_dir=state_dir, server_flag=server or None, state_dir_given=given, trace=trace, user=user or None
    )


def without_websockets(argv: list[str], environ: dict[str, str] | os._Environ[str]) -> bool:
    """Keep nats-py from importing aiohttp (half a second, for its websocket transport only) unless a websocket
    URL is in sight (an argument or FLOTILLA_NATS_URL with ws:// or wss://); True when it was kept out."""
    if "aiohttp" in sys.modules or any("ws://" in a or "wss://" in a for a in [*argv, *environ.values()]):
        return False
    sys.modules["aiohttp"] = None  # type: ignore[assignment]  # `import aiohttp` raises ImportError: nats-py copes
    return True


def main() -> None:
    """Console-script entry point."""
    without_websockets(sys.argv, os.environ)
    cli(prog_name="flotilla")
