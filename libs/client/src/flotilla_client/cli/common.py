"""What every command shares: the context (server URL, state folder), the error line, async running."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:  # imported where used: `flotilla --version` and --help need none of them (start-up time)
    from flotilla_contracts.envelope import Message
    from flotilla_contracts.subjects import Service

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


def cli_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("flotilla-client")
    except PackageNotFoundError:
        return "0.0.0"


class Failure(click.ClickException):
    """One clear line on stderr, `flotilla: error: ...`, and exit code 1 (no traceback)."""

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"flotilla: error: {self.format_message()}", err=True, file=file)


class BadUsage(Failure):
    """A Failure for input refused before anything ran: the same one line, exit code 2 (as a usage error)."""

    exit_code = 2


@dataclass
class CliContext:
    """Global options: where the local fleet keeps its state and which NATS to talk to."""

    state_dir: Path
    server_flag: str | None = None
    state_dir_given: bool = False
    trace: bool = False  # print the trace id of every command sent (and a Jaeger link)
    traces: list[str] = field(default_factory=list)
    user: str | None = None  # --user / FLOTILLA_USER: a person's bus user instead of the built-in admin

    def server_url(self) -> str:
        """--server / FLOTILLA_NATS_URL, else the URL `flotilla up` recorded in the state folder, else the default;
        with --user, logged in as that person."""
        from flotilla_client import busauth, runfile, users
        from flotilla_client.client import DEFAULT_URL
        from flotilla_runtime.natsconn import CA_ENV

        recorded = runfile.server_url(self.state_dir)
        url = self.server_flag or recorded or DEFAULT_URL
        ca = busauth.tls_ca(self.state_dir)
        if ca is not None and url.startswith("tls://") and CA_ENV not in os.environ:
            os.environ[CA_ENV] = str(ca)  # the local CA `flotilla up --tls` made
        if self.user:
            person = users.load(self.state_dir, self.user)
            url = busauth.with_user(url, person.name, person.password)
        return url

    def hint(self, command: str) -> str:
        """A command to suggest, with `--state-dir` when the user chose a folder of their own."""
        if self.state_dir_given:
            return f"flotilla --state-dir {self.state_dir} {command}"
        return f"flotilla {command}"


def explain_refusal(ctx: click.Context, error: Exception) -> str:
    """The error's line; a request the bus refused a person's user says whose role it was and what to do."""
    from flotilla_client import users
    from flotilla_client.errors import ClientError, FlotillaClientError
    from flotilla_contracts.errors import ErrorCode

    obj = ctx.find_object(CliContext)
    if not (isinstance(error, ClientError) and error.code == ErrorCode.FORBIDDEN and obj and obj.user):
        return str(error)
    try:
        role = users.load(obj.state_dir, obj.user).role.value
    except FlotillaClientError:
        role = "unknown"
    return (
        f"user {obj.user} (role {role}) is not allowed to do this: {error}; an admin can give a role that allows "
        f"it (`flotilla user add {obj.user} --role operator|admin`) or run it"
    )


def _remember_server(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value:
        ctx.ensure_object(CliContext).server_flag = value
    return value


def server_option(command: F) -> F:
    """`--server URL` accepted after the command name too (`flotilla status --server nats://...`)."""
    return click.option(
        "--server",
        metavar="URL",
        expose_value=False,
        callback=_remember_server,
        help="NATS URL (overrides the global --server and FLOTILLA_NATS_URL).",
    )(command)


def run(coro_factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run one async command body with tracing set up (spans leave only when OTEL_EXPORTER_OTLP_ENDPOINT is set)."""
    import asyncio

    from flotilla_client import tracingenv
    from flotilla_runtime import telemetry

    click_ctx = click.get_current_context(silent=True)
    obj = click_ctx.find_object(CliContext) if click_ctx else None
    if obj is not None:  # trace where the local fleet traces (`flotilla up` recorded it), unless told otherwise
        tracingenv.adopt(obj.state_dir)
    telemetry.setup_tracing("flotilla-cli", cli_version(), uuid.uuid4().hex[:12])
    name = f"flotilla {click_ctx.command_path.partition(' ')[2]}" if click_ctx else "flotilla"
    # One trace per CLI command: every request it sends, and all the work they cause, hang below this span.
    with telemetry.tracer("flotilla-cli").start_as_current_span(name):
        trace_id = telemetry.current_trace_id()
        try:
            return asyncio.run(coro_factory())
        finally:
            telemetry.flush_tracing()
            if obj is not None and obj.trace and trace_id not in obj.traces:
                obj.traces.append(trace_id)
                jaeger = os.environ.get("FLOTILLA_JAEGER_URL", "").rstrip("/")
                click.echo(f"trace {trace_id}" + (f"  {jaeger}/trace/{trace_id}" if jaeger else ""), err=True)


def echo(text: str = "", err: bool = False) -> None:
    click.echo(text, err=err)


M = TypeVar("M", bound="Message")


def call(
    obj: CliContext, service: Service, verb: str, message: Message, reply_type: type[M], timeout_s: float = 10.0
) -> M:
    """Send one command and return its typed reply data; errors become one line on stderr."""
    from flotilla_client.client import FlotillaClient

    async def go() -> M:
        async with FlotillaClient(obj.server_url()) as client:
            return await client.request(service, verb, message, reply_type, timeout=timeout_s)

    return run(go)
