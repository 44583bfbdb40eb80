"""Generates the committed contract documents from the catalogue, and refuses breaking changes.

    python -m flotilla_contracts.schemagen            write contracts/schemas/ and docs/contracts.md
    python -m flotilla_contracts.schemagen --check    exit 1 if they are stale or a change is breaking
    python -m flotilla_contracts.schemagen --allow-breaking   write even a breaking change (say why!)

Outputs: one JSON Schema per message (`contracts/schemas/v1/<domain>.<Name>.json`), the reply envelope
and error body, one AsyncAPI 3.0 document for every subject (`contracts/schemas/asyncapi.json`), and the
subject map table in `docs/contracts.md`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import msgspec

from flotilla_contracts import CONTRACTS_VERSION, compat, streams
from flotilla_contracts.catalogue import OPERATIONS, PLACEHOLDERS, Kind, Operation, message_types
from flotilla_contracts.envelope import ERROR_SCHEMA, H_SCHEMA, ErrorBody, Message, Reply, schema_id
from flotilla_contracts.ids import CLUSTER_AGENT_NODE
from flotilla_contracts.subjects import Service

REPO_ROOT = Path(__file__).resolve().parents[3]
SCHEMA_DIR = "contracts/schemas"
V1_DIR = f"{SCHEMA_DIR}/v1"
ASYNCAPI = f"{SCHEMA_DIR}/asyncapi.json"
DOC = "docs/contracts.md"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
REPLY_SCHEMA = "flotilla.Reply/v1"


def dump(document: Any) -> str:
    """Stable text: sorted keys, two-space indent, trailing newline."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def message_schema(message: type[Any], schema_name: str) -> dict[str, Any]:
    """The JSON Schema of one message, tagged with its Flotilla-Schema value."""
    schema: dict[str, Any] = msgspec.json.schema(message)
    schema["$schema"] = JSON_SCHEMA_DIALECT
    schema["$id"] = f"urn:flotilla:schema:{schema_name}"
    schema["x-flotilla-schema"] = schema_name
    return schema


def _file_name(schema_name: str) -> str:
    return f"{V1_DIR}/{schema_name.split('/v')[0]}.json"


def schema_files() -> dict[str, str]:
    """Relative path -> text of every JSON Schema file."""
    files = {_file_name(schema_id(m)): dump(message_schema(m, schema_id(m))) for m in message_types()}
    files[_file_name(REPLY_SCHEMA)] = dump(message_schema(Reply[Any], REPLY_SCHEMA))
    files[_file_name(ERROR_SCHEMA)] = dump(message_schema(ErrorBody, ERROR_SCHEMA))
    return files


# --- AsyncAPI ------------------------------------------------------------------------------------


def _op_id(op: Operation) -> str:
    return op.message.SCHEMA.replace(".", "_")


def _message_ref(message: type[Message]) -> str:
    return message.SCHEMA


def _component_message(name: str, schema_name: str, payload_ref: str, summary: str) -> dict[str, Any]:
    return {
        "name": name,
        "title": schema_name,
        "summary": summary,
        "contentType": "application/json",
        "headers": {
            "type": "object",
            "properties": {
                H_SCHEMA: {"type": "string", "const": schema_name},
                "Nats-Msg-Id": {"type": "string", "description": "Unique message id"},
                "traceparent": {"type": "string", "description": "W3C trace context"},
            },
        },
        "payload": {"$ref": payload_ref},
    }


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0] if doc else ""


def asyncapi() -> dict[str, Any]:
    """One AsyncAPI 3.0 document for every operation in the catalogue."""
    types: list[Any] = [*message_types(), ErrorBody]
    types += [Reply[op.reply] for op in OPERATIONS if op.reply is not None]  # type: ignore[name-defined]  # runtime generic alias
    _, schemas = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    messages: dict[str, Any] = {}
    for message in message_types():
        messages[_message_ref(message)] = _component_message(
            message.__name__,
            schema_id(message),
            f"#/components/schemas/{message.__name__}",
            _first_line(message.__doc__),
        )
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for op in OPERATIONS:
        op_id = _op_id(op)
        channel: dict[str, Any] = {
            "address": op.subject,
            "title": op.subject,
            "summary": op.summary,
            "messages": {_message_ref(op.message): {"$ref": f"#/components/messages/{_message_ref(op.message)}"}},
        }
        if op.placeholders:
            channel["parameters"] = {name: {"description": PLACEHOLDERS[name]} for name in op.placeholders}
            if "service" in op.placeholders:
                channel["parameters"]["service"]["enum"] = [s.value for s in Service]
        stream = _event_stream(op) if op.kind is Kind.EVENT else ""
        delivery = {
            Kind.COMMAND: "core NATS request/reply",
            Kind.HEARTBEAT: "core NATS, volatile",
            Kind.EVENT: f"JetStream stream {stream}, Nats-Msg-Id = event id",
            Kind.AGENT_COMMAND: f"JetStream work-queue stream {streams.FLEET_AGENT.name}, one durable per node",
        }[op.kind]
        channel["x-flotilla-delivery"] = delivery
        if op.kind is Kind.EVENT:
            channel["x-flotilla-stream"] = stream
        elif op.kind is Kind.AGENT_COMMAND:
            channel["x-flotilla-stream"] = streams.FLEET_AGENT.name
        channels[op_id] = channel
        operation: dict[str, Any] = {
            "action": "receive" if op.kind in (Kind.COMMAND, Kind.AGENT_COMMAND) else "send",
            "channel": {"$ref": f"#/channels/{op_id}"},
            "summary": op.summary,
            "messages": [{"$ref": f"#/channels/{op_id}/messages/{_message_ref(op.message)}"}],
            "x-flotilla-kind": op.kind.value,
            "x-flotilla-owner": op.owner.value if op.owner else "every service",
        }
        if op.sender is not None:
            operation["x-flotilla-sender"] = op.sender.value
        if op.kind is Kind.COMMAND:
            queue = op.owner.value if op.owner else "{service}"
            operation["bindings"] = {"nats": {"queue": queue, "bindingVersion": "0.1.0"}}
        if op.reply is not None:
            ok_name = f"{op.reply.SCHEMA}.ok"
            reply_id = f"{op_id}_reply"
            messages.setdefault(
                ok_name,
                _component_message(
                    f"{op.reply.__name__}Ok",
                    schema_id(op.reply),
                    f"#/components/schemas/Reply_{op.reply.__name__}_",
                    f"ok=true, data: {op.reply.SCHEMA}",
                ),
            )
            channels[reply_id] = {
                "address": None,
                "description": "The requester's NATS reply inbox.",
                "messages": {
                    ok_name: {"$ref": f"#/components/messages/{ok_name}"},
                    "flotilla.Error": {"$ref": "#/components/messages/flotilla.Error"},
                },
            }
            operation["reply"] = {
                "channel": {"$ref": f"#/channels/{reply_id}"},
                "messages": [
                    {"$ref": f"#/channels/{reply_id}/messages/{ok_name}"},
                    {"$ref": f"#/channels/{reply_id}/messages/flotilla.Error"},
                ],
            }
        operations[op_id] = operation
    error_envelope = {
        "type": "object",
        "properties": {"ok": {"const": False}, "error": {"$ref": "#/components/schemas/ErrorBody"}},
        "required": ["ok", "error"],
    }
    schemas["ErrorReply"] = error_envelope
    messages["flotilla.Error"] = _component_message(
        "ErrorReply", ERROR_SCHEMA, "#/components/schemas/ErrorReply", "ok=false, error: code, message, details"
    )
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Flotilla",
            "version": CONTRACTS_VERSION,
            "description": (
                "Every subject of the Flotilla bus (contracts v1). Commands are request/reply with a "
                "queue group per service; events are in JetStream FLEET_EVENTS, what members report (node "
                "steps, applied workloads, agents' dead letters) in the bounded FLEET_REPORTS; agent commands in the "
                "FLEET_AGENT work queue; heartbeats are core NATS. Generated by "
                "`python -m flotilla_contracts.schemagen` from the contracts catalogue."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {"local": {"host": "localhost:4222", "protocol": "nats"}},
        "channels": channels,
        "operations": operations,
        "components": {"schemas": schemas, "messages": messages},
    }


def _event_stream(op: Operation) -> str:
    """The stream an event's subjects are stored in (a `{service}` pattern may name both)."""
    services = [op.owner] if op.owner else list(Service)
    found: dict[str, list[str]] = {}
    for service in services if "service" in op.placeholders else [None]:
        ids = {name: (service.value if name == "service" and service else "x") for name in op.placeholders}
        for spec in streams.event_streams_for(op.fill(**ids)):
            found.setdefault(spec.name, []).append(service.value if service else "")
    if len(found) == 1:
        return next(iter(found))
    main, *others = sorted(found, key=lambda name: -len(found[name]))
    return main + "".join(f" ({name} for {', '.join(found[name])})" for name in others)


# --- docs/contracts.md -----------------------------------------------------------------------------


def subject_map() -> str:
    """The subject map as a Markdown table, grouped by kind, in catalogue order."""
    lines = [
        "# Flotilla contracts: the subject map",
        "",
        "<!-- Generated by `python -m flotilla_contracts.schemagen` (`make schemas`); do not edit. -->",
        "",
        "Every subject on the Flotilla bus, from `flotilla_contracts.catalogue.OPERATIONS`. `{placeholders}` "
        "stand for one token each (see `contracts/README.md`). Messages are named by their `Flotilla-Schema` "
        "header (all `/v1`); their JSON Schemas are in `contracts/schemas/v1/`, the AsyncAPI 3.0 document "
        "is `contracts/schemas/asyncapi.json`. Command replies are `Reply` envelopes: `ok` with `data`, or "
        "an error (`flotilla.Error/v1`) with a stable code.",
        "",
        "| placeholder | one token standing for |",
        "|---|---|",
        *[f"| `{{{name}}}` | {text} |" for name, text in PLACEHOLDERS.items()],
        "",
        f"Cluster-wide agent commands use the pseudo-node token `{CLUSTER_AGENT_NODE}` in place of `{{node_id}}`; "
        "no node token can take that value.",
        "",
    ]
    titles = {
        Kind.COMMAND: "Commands and queries (request/reply, queue group = service)",
        Kind.EVENT: "Events (JetStream `FLEET_EVENTS`; what members report: `FLEET_REPORTS`)",
        Kind.HEARTBEAT: "Heartbeats (core NATS)",
        Kind.AGENT_COMMAND: "Agent commands (JetStream `FLEET_AGENT`: a consumer per node with work, by its sender)",
    }
    reports = streams.FLEET_REPORTS
    notes = {
        Kind.EVENT: [
            f"The events members publish (owner node-agent: {', '.join(f'`{s}`' for s in reports.subjects)}) are "
            f"stored in `{reports.name}`, bounded: {reports.max_msgs_per_subject:,} messages per subject, "
            f"{reports.max_bytes // 1024**2:,} MiB, {reports.max_age_s / 86400:g} days, oldest dropped first. "
            f"Every other event, what the services emit, is in `{streams.FLEET_EVENTS.name}`, kept.",
            "",
        ]
    }
    for kind in (Kind.COMMAND, Kind.EVENT, Kind.HEARTBEAT, Kind.AGENT_COMMAND):
        lines += [
            f"## {titles[kind]}",
            "",
            *notes.get(kind, []),
            "| subject | kind | message | reply | owner | summary |",
        ]
        lines.append("|---|---|---|---|---|---|")
        for op in OPERATIONS:
            if op.kind is not kind:
                continue
            owner = op.owner.value if op.owner else "every service"
            if op.sender is not None:
                owner += f" (sent by {op.sender.value})"
            reply = f"`{op.reply.SCHEMA}`" if op.reply else ""
            lines.append(
                f"| `{op.subject}` | {op.kind.value} | `{op.message.SCHEMA}` | {reply} | {owner} | {op.summary} |"
            )
        lines.append("")
    return "\n".join(lines)


# --- driver ------------------------------------------------------------------------------------


def render() -> dict[str, str]:
    """Every generated file: relative path from the repository root -> its text."""
    files = schema_files()
    files[ASYNCAPI] = dump(asyncapi())
    files[DOC] = subject_map()
    return files


def committed(root: Path) -> dict[str, str]:
    """The generated files as they are on disk (JSON Schemas, AsyncAPI, subject map)."""
    found: dict[str, str] = {}
    for path in sorted((root / V1_DIR).glob("*.json")):
        found[path.relative_to(root).as_posix()] = path.read_text(encoding="utf-8")
    for name in (ASYNCAPI, DOC):
        if (root / name).exists():
            found[name] = (root / name).read_text(encoding="utf-8")
    return found


def stale(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """Files to add, change or delete to bring `old` to `new`."""
    out = [f"missing: {p}" for p in sorted(set(new) - set(old))]
    out += [f"out of date: {p}" for p in sorted(set(new) & set(old)) if new[p] != old[p]]
    out += [f"no longer generated: {p}" for p in sorted(set(old) - set(new))]
    return out


def breaking(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """Breaking changes from the committed documents to the generated ones."""
    problems: list[str] = []
    for path in sorted(old):
        if not path.startswith(V1_DIR):
            continue
        name = Path(path).stem
        if path not in new:
            problems.append(f"{name}: message removed")
            continue
        problems += [f"{name}: {p}" for p in compat.breaking_changes(json.loads(old[path]), json.loads(new[path]))]
    if ASYNCAPI in old and ASYNCAPI in new:
        problems += compat.subject_changes(json.loads(old[ASYNCAPI]), json.loads(new[ASYNCAPI]))
    return problems


_BREAKING_ADVICE = (
    "A breaking change must be a new v2 message served beside v1 (a new SCHEMA version and subject), "
    "never an edit of a v1 message. Within v1, only add fields with defaults and enum values."
)


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flotilla_contracts.schemagen", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if files are stale or a change is breaking")
    parser.add_argument("--allow-breaking", action="store_true", help="write even a breaking change")
    parser.add_argument("--root", type=Path, default=REPO_ROOT, help="repository root (default: %(default)s)")
    args = parser.parse_args(argv)
    root: Path = args.root
    new, old = render(), committed(root)
    problems = breaking(old, new)
    if args.check:
        diffs = stale(old, new)
        for line in diffs:
            _err(f"  {line}")
        for line in problems:
            _err(f"  BREAKING {line}")
        if problems:
            _err(_BREAKING_ADVICE)
        if diffs or problems:
            _err("contract documents are stale or broken: run `make schemas`")
            return 1
        _out(f"contract documents up to date ({len(new)} files)")
        return 0
    if problems and not args.allow_breaking:
        _err("refusing to write: these changes break v1 contracts:")
        for line in problems:
            _err(f"  {line}")
        _err(_BREAKING_ADVICE)
        _err("(--allow-breaking overrides, e.g. before a v1 was ever released)")
        return 1
    for path in sorted(set(old) - set(new)):
        (root / path).unlink()
    for path, text in new.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if old.get(path) != text:
            target.write_text(text, encoding="utf-8")
    _out(f"wrote {len(new)} files under {root}" + (f" ({len(problems)} breaking, allowed)" if problems else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
