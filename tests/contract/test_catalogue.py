"""Catalogue sanity: schema names, Struct options, subject shapes, unique commands, token ids."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest
from contract_samples import sample_body, token_paths

from flotilla_contracts import catalogue, subjects
from flotilla_contracts.envelope import Message, schema_id
from flotilla_contracts.ids import (
    CLUSTER_AGENT_NODE,
    TOKEN_PATTERN,
    InvalidIdError,
    is_token,
    node_name_from_token,
    node_token,
)
from flotilla_contracts.v1 import __path__ as v1_path

DOMAINS = {"service", "registration", "heartbeat", "scheduler", "upgrade", "agent", "deadletter", "security"}
MESSAGES = catalogue.message_types()
BAD_IDS = ["a.b", "a*", "a b", ">", "", "x" * 129]


def _v1_modules() -> list[Any]:
    return [importlib.import_module(f"flotilla_contracts.v1.{m.name}") for m in pkgutil.iter_modules(v1_path)]


def _defined_messages() -> list[type[Message]]:
    found: list[type[Message]] = []
    for module in _v1_modules():
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, Message) and obj is not Message and obj.__module__ == module.__name__:
                found.append(obj)
    return found


def _kw_only(cls: type[Any]) -> bool:
    """True when every field must be given by name (an empty Struct trivially is)."""
    return all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in inspect.signature(cls).parameters.values())


def test_every_defined_message_is_in_the_catalogue() -> None:
    missing = {m.__qualname__ for m in _defined_messages()} - {m.__qualname__ for m in MESSAGES}
    assert not missing, f"messages defined but on no subject: {sorted(missing)}"


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: m.SCHEMA)
def test_message_is_named_frozen_and_kw_only(message: type[Message]) -> None:
    domain, _, name = message.SCHEMA.partition(".")
    assert domain in DOMAINS and name == message.__name__, message.SCHEMA
    module = message.__module__.rsplit(".", 1)[-1]
    assert module.startswith(domain), f"{message.SCHEMA} lives in v1/{module}.py"
    config = message.__struct_config__
    assert config.frozen and _kw_only(message) and not config.omit_defaults
    assert message.__doc__ and message.__doc__.strip()


def test_schema_ids_and_struct_names_are_unique() -> None:
    assert len({schema_id(m) for m in MESSAGES}) == len(MESSAGES)
    structs: dict[str, type[Any]] = {}

    def walk(t: mi.Type) -> None:
        if isinstance(t, mi.StructType):
            if structs.setdefault(t.cls.__name__, t.cls) is not t.cls:
                raise AssertionError(f"two Structs named {t.cls.__name__}: {t.cls} and {structs[t.cls.__name__]}")
            for field in t.fields:
                walk(field.type)
        for attr in ("type", "item_type", "key_type", "value_type"):
            if hasattr(t, attr) and not isinstance(t, mi.StructType):
                walk(getattr(t, attr))
        if isinstance(t, mi.UnionType):
            for x in t.types:
                walk(x)

    for message in MESSAGES:
        walk(mi.type_info(message))


def test_every_struct_and_module_is_documented() -> None:
    for module in _v1_modules():
        assert module.__doc__, module.__name__
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if obj.__module__ == module.__name__ and issubclass(obj, msgspec.Struct):
                assert obj.__doc__ and obj.__doc__.strip(), obj.__qualname__
                config = obj.__struct_config__
                assert config.frozen and _kw_only(obj), obj.__qualname__


PREFIX = {
    catalogue.Kind.COMMAND: subjects.CMD_PREFIX + ".",
    catalogue.Kind.EVENT: subjects.EVT_PREFIX + ".",
    catalogue.Kind.HEARTBEAT: subjects.HB_PREFIX + ".",
    catalogue.Kind.AGENT_COMMAND: subjects.AGENT_PREFIX + ".",
}


@pytest.mark.parametrize("op", catalogue.OPERATIONS, ids=lambda op: op.subject)
def test_subject_shape_matches_its_kind(op: catalogue.Operation) -> None:
    assert op.subject.startswith(PREFIX[op.kind])
    assert set(op.placeholders) <= set(catalogue.PLACEHOLDERS)
    assert (op.reply is not None) == (op.kind is catalogue.Kind.COMMAND)
    ids = {name: f"v-{name}" for name in op.placeholders}
    filled = op.fill(**ids)
    tokens = filled.split(".")
    assert all(t and is_token(t) for t in tokens[2:]) or op.kind is catalogue.Kind.COMMAND
    if op.kind is catalogue.Kind.COMMAND:
        service, verb = tokens[3], ".".join(tokens[4:])
        assert re.fullmatch(r"[a-z]+(\.[a-z]+)*", verb), verb
        if op.owner is not None:
            assert service == op.owner.value
            assert filled == subjects.command(op.owner, verb)
    elif op.kind is catalogue.Kind.EVENT:
        entity = subjects.Entity(tokens[3])
        assert re.fullmatch(r"[a-z]+(-[a-z]+)*", tokens[-1]), tokens[-1]
        assert filled == subjects.event(entity, tuple(tokens[4:-1]), tokens[-1])
        assert len(op.placeholders) == len(tokens) - 5, "every id of an event is a placeholder"
    elif op.kind is catalogue.Kind.HEARTBEAT and "node_id" not in ids:
        assert filled == subjects.heartbeat_batch(ids["cluster_id"])
    elif op.kind is catalogue.Kind.HEARTBEAT:
        assert filled == subjects.heartbeat(ids["cluster_id"], ids["node_id"])
    else:
        node = ids.get("node_id", CLUSTER_AGENT_NODE)
        assert filled == subjects.agent_command(ids["cluster_id"], node, tokens[-1])
        assert op.sender is not None


def test_command_subjects_are_unique_and_messages_have_one_subject() -> None:
    subjects_seen = [op.subject for op in catalogue.OPERATIONS]
    assert len(subjects_seen) == len(set(subjects_seen))
    for op in catalogue.OPERATIONS:
        assert catalogue.operation_for(op.message) is op


def test_subject_for_fills_and_checks_ids() -> None:
    from flotilla_contracts.v1.registration_events import ClusterApproved

    assert catalogue.subject_for(ClusterApproved, cluster_id="c-1") == "fleet.v1.evt.cluster.c-1.approved"
    with pytest.raises(InvalidIdError):
        catalogue.subject_for(ClusterApproved, cluster_id="c.1")
    with pytest.raises(KeyError):
        catalogue.subject_for(ClusterApproved)


@pytest.mark.parametrize("op", catalogue.OPERATIONS, ids=lambda op: op.subject)
def test_ids_in_reads_back_what_fill_wrote(op: catalogue.Operation) -> None:
    ids = {name: f"{name.replace('_', '-')}-1" for name in op.placeholders}
    assert op.ids_in(op.fill(**ids)) == ids


def test_ids_in_refuses_other_subjects() -> None:
    from flotilla_contracts.v1.agent import NodeStepReported

    op = catalogue.operation_for(NodeStepReported)
    assert op.ids_in("fleet.v1.evt.node-step.x.n1.reported") == {"cluster_id": "x", "node_id": "n1"}
    for other in (
        "fleet.v1.evt.node-step.x.reported",
        "fleet.v1.evt.node-step.x.n1.n2.reported",
        "fleet.v1.evt.node-step.x.n1.failed",
        "fleet.v1.evt.node.x.n1.reported",
        "fleet.v1.evt.node-step.*.n1.reported",
        "fleet.v1.evt.node-step..n1.reported",
    ):
        assert op.ids_in(other) is None, other


def test_no_stream_captures_commands() -> None:
    from flotilla_contracts.streams import STREAMS

    for stream in STREAMS:
        for pattern in stream.subjects:
            assert not subjects.CMD_PREFIX.startswith(pattern.rstrip(">").rstrip(".")), pattern


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: m.SCHEMA)
def test_every_id_field_rejects_non_tokens(message: type[Message]) -> None:
    body = sample_body(message, full=True)
    paths = token_paths(mi.type_info(message), body)
    msgspec.json.decode(msgspec.json.encode(body), type=message)
    for path in paths:
        for bad in BAD_IDS:
            from contract_samples import replaced

            with pytest.raises(msgspec.ValidationError):
                msgspec.json.decode(msgspec.json.encode(replaced(body, path, bad)), type=message)


def test_messages_that_name_entities_have_id_fields() -> None:
    """At least the obvious ids are checked: guards the walker above against finding nothing."""
    from flotilla_contracts.v1.agent import NodeStepCommand

    paths = token_paths(mi.type_info(NodeStepCommand), sample_body(NodeStepCommand, full=True))
    assert {p[0] for p in paths} >= {"command_id", "rollout_id", "cluster_id", "node_id"}


ID_FIELD_NAMES = {
    "cluster_id", "node_id", "rollout_id", "token_id", "command_id", "request_id",
    "subscription", "cluster_ids", "trigger_cluster_id", "removed", "sample_nodes",
}  # fmt: skip


def _token_fields(t: mi.Type) -> list[str]:
    """Names of Struct fields, anywhere in the type, whose name says "id" but whose type is no token."""
    bad: list[str] = []
    seen: set[type[Any]] = set()

    def inner(x: mi.Type) -> mi.Type:
        while True:
            if isinstance(x, mi.Metadata):
                x = x.type
            elif isinstance(x, mi.UnionType):
                x = next(y for y in x.types if not isinstance(y, mi.NoneType))
            elif isinstance(x, mi.ListType):
                x = x.item_type
            else:
                return x

    def walk(x: mi.Type) -> None:
        x = inner(x)
        if isinstance(x, mi.DictType):
            walk(x.value_type)
        if not isinstance(x, mi.StructType) or x.cls in seen:
            return
        seen.add(x.cls)
        for field in x.fields:
            leaf = inner(field.type)
            if field.name in ID_FIELD_NAMES and isinstance(leaf, mi.StrType) and leaf.pattern != TOKEN_PATTERN:
                bad.append(f"{x.cls.__name__}.{field.name}")
            walk(field.type)

    walk(t)
    return bad


def test_fields_named_as_ids_are_tokens() -> None:
    bad = [name for message in MESSAGES for name in _token_fields(mi.type_info(message))]
    assert not bad, f"id fields that are not token types: {sorted(set(bad))}"


@pytest.mark.parametrize("name", ["worker-1", "ip-10-0-0-1.eu-west-1.compute.internal", "a", "n0.b"])
def test_node_token_round_trips(name: str) -> None:
    token = node_token(name)
    assert is_token(token) and "." not in token
    assert node_name_from_token(token) == name


@pytest.mark.parametrize("name", ["", "Upper", "a_b", "-a", "a.", "a..b", "x" * 129, "a*b"])
def test_node_token_refuses_non_node_names(name: str) -> None:
    with pytest.raises(InvalidIdError):
        node_token(name)


def test_cluster_pseudo_node_is_a_token_no_node_can_have() -> None:
    assert is_token(CLUSTER_AGENT_NODE)
    with pytest.raises(InvalidIdError):
        node_name_from_token(CLUSTER_AGENT_NODE)


def test_every_error_code_has_a_status() -> None:
    from flotilla_contracts.errors import STATUS, ErrorCode

    assert set(STATUS) == set(ErrorCode)
