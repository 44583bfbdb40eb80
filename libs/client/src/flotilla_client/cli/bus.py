"""Bus tools: `events` replays and follows the event streams; `publish` sends any message or request."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import click
import msgspec

from flotilla_client.cli.common import CliContext, Failure, echo, run, server_option
from flotilla_client.cli.output import (
    Column,
    TableStream,
    output_option,
    render_json,
    render_json_line,
    render_yaml,
)
from flotilla_client.client import FlotillaClient, RawReply
from flotilla_client.durations import parse_since
from flotilla_client.errors import UsageError
from flotilla_client.events import EventRecord, event_filter
from flotilla_contracts.envelope import H_SERVICE_ERROR, SchemaIdError, parse_schema_id

pass_cli = click.make_pass_decorator(CliContext)
_HEADER_NAME = re.compile(r"^[A-Za-z0-9_-]+$")

EVENT_COLUMNS = (
    Column("SEQ", "seq"),
    Column("TIME", lambda e: e.time.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")),
    Column("SUBJECT", "subject"),
    Column("SCHEMA", "schema"),
    Column("ACTOR", lambda e: e.actor or None),
    Column("DATA", lambda e: render_json_line(e.data) if e.data is not None else None),
)
EVENT_WIDTHS = (6, 24, 52, 32, 10, 0)


@click.command()
@click.option("-f", "--follow", is_flag=True, help="Keep printing new events until Ctrl-C.")
@click.option(
    "-s",
    "--subject",
    "pattern",
    metavar="PATTERN",
    help="Only events matching this subject pattern (`*` one token, `>` the rest); "
    "the fleet.v1.evt. prefix may be left out, e.g. 'cluster.*.approved'.",
)
@click.option(
    "--since",
    metavar="DURATION|TIME",
    help="Only events newer than this: a duration (30s, 10m, 2h, 1d) or a time (2026-12-03T21:00:00Z).",
)
@click.option(
    "--actor",
    metavar="USER",
    help="Only events a command of this person caused (`admin`: the built-in admin's); see `flotilla audit`.",
)
@output_option("table", "json", "yaml")
@server_option
@pass_cli
def events(
    obj: CliContext, follow: bool, pattern: str | None, since: str | None, actor: str | None, output: str
) -> None:
    """Replay (and follow) the fleet's events.

    Events come oldest first; without --follow the command exits once it has caught up. What the services emit
    is in the FLEET_EVENTS stream, what members report (node-step, applied, node-agent dead letters) in the
    bounded FLEET_REPORTS; a pattern within one reads that stream, a wider one both, merged by time.

    JSON output is one event per line: subject, seq, time, schema, msg_id, data, stream (seq counts in it),
    actor (who caused it: a person's command names them) and trace_id; YAML output one YAML document per event
    (each after `---`), with the same fields.
    Reading uses an ephemeral ordered consumer: nothing is left on the server.

    \b
    Examples:
      flotilla events
      flotilla events --follow --subject 'cluster.>'
      flotilla events --since 10m -o json
      flotilla events --subject 'rollout.>' -o yaml
      flotilla events --since 2026-12-03T21:00:00Z
      flotilla events --actor alice --since 1d
    """
    subject = event_filter(pattern)
    window = parse_since(since, datetime.now(UTC)) if since else None
    start = window.start if window else None
    url = obj.server_url()
    table = TableStream(EVENT_COLUMNS, EVENT_WIDTHS)

    def show(event: EventRecord) -> None:
        if output == "yaml":
            echo("---\n" + render_yaml(event))
        else:
            echo(render_json_line(event) if output == "json" else table.row(event))

    async def read() -> int:
        count = 0
        async with FlotillaClient(url) as client:
            async for event in client.events(subject, since=start, follow=follow):
                if actor and event.actor != actor:
                    continue
                show(event)
                count += 1
        return count

    try:
        count = run(read)
    except KeyboardInterrupt:
        return
    if not count:
        when = f" {window.words}" if window else ""
        by = f" caused by {actor}" if actor else ""
        echo(f"no events matching {subject}{by}{when}", err=True)


def check_subject(subject: str) -> str:
    """A subject one can publish to: not empty, no spaces, no empty tokens, no wildcards."""
    if not subject.strip():
        raise UsageError("the subject is empty")
    if any(ch.isspace() for ch in subject):
        raise UsageError(f"subject {subject!r} contains spaces; subjects are tokens separated by dots")
    if any(not token for token in subject.split(".")):
        raise UsageError(f"subject {subject!r} has an empty token (a leading, trailing or double dot)")
    if any(token in ("*", ">") for token in subject.split(".")):
        raise UsageError(f"subject {subject!r} has a wildcard; messages go to one concrete subject")
    return subject


def parse_headers(pairs: tuple[str, ...]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not _HEADER_NAME.match(name):
            raise UsageError(f"header {pair!r} is not NAME=VALUE (NAME of letters, digits, - and _)")
        headers[name] = value
    return headers


def check_json(text: str) -> bytes:
    data = text.encode()
    try:
        msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise UsageError(f"the JSON argument is not valid JSON ({exc}); nothing was sent") from None
    return data


@click.command()
@click.argument("subject")
@click.argument("payload", metavar="JSON")
@click.option("-r", "--request", is_flag=True, help="Send as a request and print the reply.")
@click.option("--schema", metavar="NAME/vN", help="Flotilla-Schema header, e.g. service.InfoRequest/v1.")
@click.option("-H", "--header", "header_pairs", multiple=True, metavar="K=V", help="Extra header (repeatable).")
@click.option("--timeout", type=float, default=5.0, show_default=True, help="Seconds to wait for a reply.")
@server_option
@pass_cli
def publish(
    obj: CliContext,
    subject: str,
    payload: str,
    request: bool,
    schema: str | None,
    header_pairs: tuple[str, ...],
    timeout: float,
) -> None:
    """Publish a JSON message, or send a request and print the reply.

    The JSON is checked locally first; nothing is sent when it is not valid.

    Every message carries Nats-Msg-Id, Flotilla-Sent-At and trace context headers. With
    --request, the exit code is 1 when the reply is an error (ok=false).

    \b
    Examples:
      flotilla publish fleet.v1.cmd.registration.info '{}' --request
      flotilla publish fleet.v1.cmd.registration.info '{}' -r --schema service.InfoRequest/v1
      flotilla publish fleet.v1.evt.cluster.c1.noted '{"note": "hi"}' -H Origin=me
    """
    check_subject(subject)
    data = check_json(payload)
    if schema:
        try:
            parse_schema_id(schema)
        except SchemaIdError as exc:
            raise UsageError(str(exc)) from None
    headers = parse_headers(header_pairs)
    url = obj.server_url()

    async def send() -> RawReply | str:
        async with FlotillaClient(url) as client:
            if request:
                return await client.request_raw(subject, data, schema, headers=headers, timeout=timeout)
            return await client.publish(subject, data, schema, headers=headers)

    result = run(send)
    if isinstance(result, str):
        echo(f"published to {subject} (Nats-Msg-Id {result})")
        return
    _print_reply(result)


def _print_reply(reply: RawReply) -> None:
    body: Any
    try:
        body = msgspec.json.decode(reply.data) if reply.data else None
    except msgspec.DecodeError:
        echo(reply.data.decode("utf-8", "replace"))
        body = None
    else:
        echo(render_json(body))
    if isinstance(body, dict) and body.get("ok") is False:
        error = body.get("error") or {}
        raise Failure(f"the reply is an error: {error.get('code', '?')}: {error.get('message', '')}")
    if H_SERVICE_ERROR in reply.headers:
        raise Failure(f"the reply is an error: {reply.headers[H_SERVICE_ERROR]}")
