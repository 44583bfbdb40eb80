"""`flotilla audit`: who did what, when, read from the event log (see flotilla_client.audit)."""

from __future__ import annotations

from datetime import UTC, datetime

import click

from flotilla_client.cli.common import CliContext, echo, run, server_option
from flotilla_client.cli.output import Column, Listing, output_option, show_list

pass_cli = click.make_pass_decorator(CliContext)

AUDIT_LISTING = Listing(
    "command",
    "commands",
    (
        Column("TIME", lambda e: e.time.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")),
        Column("ACTOR", "actor"),
        Column("OBJECT", "object"),
        Column("ACTION", "action"),
        Column("EVENTS", "events"),
        Column("DETAIL", "detail", max_width=60),
        Column("TRACE", "trace_id", wide=True),
    ),
    lambda e: f"{e.actor}/{e.first_seq}",
)


@click.command()
@click.option("--actor", metavar="USER", help="Only this person's commands (`admin`: the built-in admin's).")
@click.option(
    "--since",
    metavar="DURATION|TIME",
    help="Only commands newer than this: a duration (30s, 10m, 2h, 1d) or a time (2026-12-03T21:00:00Z).",
)
@output_option("table", "wide", "json", "yaml")
@server_option
@pass_cli
def audit(obj: CliContext, actor: str | None, since: str | None, output: str) -> None:
    """Who did what, when: every command that changed the fleet, from the event log.

    One line per command: its time, the actor (a named user, or `admin` for the built-in admin), what it acted
    on, what happened first (`started`, `approved`, a state change such as `Paused`), how many events it
    caused and the reason given. The actor is what the bus proved: a named user can send commands only in
    their own name (docs/cli.md, Named users). Refused commands and reads change nothing and are not listed;
    `-o wide` adds the trace id (open it in Jaeger); `flotilla events --actor USER` shows every event.

    \b
    Examples:
      flotilla audit
      flotilla audit --actor alice --since 1d
      flotilla audit --since 2026-12-03T21:00:00Z -o json
    """
    from flotilla_client import audit as trail
    from flotilla_client.client import FlotillaClient
    from flotilla_client.durations import parse_since
    from flotilla_contracts.subjects import ALL_EVENTS

    window = parse_since(since, datetime.now(UTC)) if since else None
    url = obj.server_url()

    async def read() -> list[trail.AuditEntry]:
        async with FlotillaClient(url) as client:
            records = [event async for event in client.events(ALL_EVENTS, since=window.start if window else None)]
        return trail.entries(records, actor)

    found = run(read)
    if not found and output in ("table", "wide"):
        by = f" by {actor}" if actor else ""
        echo(f"No commands{by} found{f' {window.words}' if window else ''}.", err=True)
        return
    show_list(found, output, AUDIT_LISTING)
