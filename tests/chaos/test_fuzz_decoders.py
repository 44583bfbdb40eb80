"""Every decoder fed random and mutated messages: only typed errors come out, and memory stays bounded.

Decoders fuzzed (DESIGN: bad input never crashes a service):
- `flotilla_runtime.codec.decode` for every command request type in the contracts catalogue, and for the
  node-agent's `NodeStepCommand` followed by its `wrong_target` check (the agent's command decode path);
  the only error allowed is `RequestError` with a stable code.
- the heartbeat ingest's batch decode (`Ingest.flush`): it never raises, and each message is either
  applied or counted as dropped under a reason.
- the upgrade orchestrator's intake decode (`Intake._decode`): it never raises; it returns the typed event,
  a dead-letter reason, or "ignore".
"""

from __future__ import annotations

import contextlib
import json
import os
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
from contract_samples import sample_body
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from flotilla_contracts import catalogue
from flotilla_contracts.catalogue import Kind
from flotilla_contracts.envelope import DEFAULT_MAX_MESSAGE_BYTES, H_MSG_ID, H_SCHEMA, Message, schema_id
from flotilla_contracts.errors import ErrorCode
from flotilla_contracts.v1.agent import NodeStepCommand
from flotilla_contracts.v1.heartbeat import Heartbeat, NoiseReason
from flotilla_heartbeat.ingest import Ingest
from flotilla_heartbeat.noise import NoiseWindow
from flotilla_node_agent.domain import wrong_target
from flotilla_runtime import codec
from flotilla_runtime.errors import RequestError
from flotilla_upgrade_orchestrator.intake import Intake

EXAMPLES = int(os.environ.get("FLOTILLA_FUZZ_EXAMPLES", "400"))
COMMANDS: list[type[Message]] = [op.message for op in catalogue.OPERATIONS if op.kind is Kind.COMMAND]
EVENTS: list[type[Message]] = [op.message for op in catalogue.OPERATIONS if op.kind is Kind.EVENT]
ERROR_CODES = {code.value for code in ErrorCode}
# A large input (4x the message limit) and a deeply nested one under the limit: the decoders' peak Python
# allocation must stay under this, i.e. they never build more than a small multiple of the input.
MEMORY_BOUND_BYTES = 16 * 1024 * 1024
CASES: Counter[str] = Counter()
# msgspec 0.22 raises a bare UnicodeDecodeError (not msgspec.DecodeError) for invalid UTF-8 inside a JSON
# string; this fuzzing found that no decoder caught it. Now every decoder does, and any escape fails the test.
# The invalid-UTF-8 tests at the end are the regressions.
BAD_UTF8 = b'{"command_id":"\xe9d-1"}'

FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)

json_values = hs.recursive(
    hs.none() | hs.booleans() | hs.integers() | hs.floats(allow_nan=True) | hs.text(max_size=40),
    lambda inner: hs.lists(inner, max_size=5) | hs.dictionaries(hs.text(max_size=12), inner, max_size=5),
    max_leaves=20,
)
schema_headers = hs.none() | hs.fixed_dictionaries(
    {},
    optional={
        H_SCHEMA: hs.sampled_from(
            ["", "nonsense", "a/b/c", "/v1", "x.Y/v", "x.Y/v999", *(schema_id(t) for t in COMMANDS + EVENTS)]
        )
        | hs.text(max_size=30),
        H_MSG_ID: hs.text(max_size=20),
    },
)


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[None]:
    yield
    print(f"\nfuzz cases run: {sum(CASES.values())} {dict(CASES)}")


def _mutate(body: bytes, data: hs.DataObject) -> bytes:
    """Byte-level mutations of a valid body: flips, cuts, splices, repeats."""
    raw = bytearray(body)
    for _ in range(data.draw(hs.integers(1, 4))):
        how = data.draw(hs.sampled_from(["flip", "cut", "insert", "repeat", "delete"]))
        at = data.draw(hs.integers(0, max(0, len(raw) - 1)))
        if how == "flip" and raw:
            raw[at] ^= 1 << data.draw(hs.integers(0, 7))
        elif how == "cut":
            del raw[at:]
        elif how == "insert":
            raw[at:at] = data.draw(hs.binary(min_size=1, max_size=8) | hs.sampled_from([b'"', b"{", b"]", b"\x00"]))
        elif how == "repeat":
            raw[at:at] = raw[at : at + 16] * data.draw(hs.integers(1, 50))
        elif raw:
            del raw[at : at + data.draw(hs.integers(1, 8))]
    return bytes(raw)


def _structural(body: dict[str, Any], data: hs.DataObject) -> bytes:
    """Field-level mutations: a field dropped, retyped, or an unknown one added."""
    body = dict(body)
    keys = sorted(body)
    for _ in range(data.draw(hs.integers(1, 3))):
        how = data.draw(hs.sampled_from(["drop", "retype", "add"]))
        if how == "add" or not keys:
            body[data.draw(hs.text(max_size=10))] = data.draw(json_values)
        elif how == "drop":
            body.pop(data.draw(hs.sampled_from(keys)), None)
        else:
            body[data.draw(hs.sampled_from(keys))] = data.draw(json_values)
    return json.dumps(body, allow_nan=True).encode()


def _message_bytes(message_type: type[Message], data: hs.DataObject) -> bytes:
    """Random bytes, random JSON, or a valid sample of `message_type` mutated by bytes or by fields."""
    kind = data.draw(hs.sampled_from(["random", "json", "bytes", "fields"]))
    CASES[f"input:{kind}"] += 1
    if kind == "random":
        return data.draw(hs.binary(max_size=300))
    if kind == "json":
        return json.dumps(data.draw(json_values), allow_nan=True).encode()
    body = sample_body(message_type, full=data.draw(hs.booleans()))
    if kind == "bytes":
        return _mutate(msgspec.json.encode(body), data)
    return _structural(body, data)


def _expect_request_error_or_value(message_type: type[Message], payload: bytes, headers: Any) -> Any:
    try:
        value = codec.decode(payload, message_type, headers=headers, max_bytes=DEFAULT_MAX_MESSAGE_BYTES)
    except RequestError as exc:
        assert exc.code in ERROR_CODES and exc.message, (exc.code, exc.message)
        exc.to_body()  # the error reply must build
        CASES["codec:RequestError"] += 1
        return None
    assert isinstance(value, message_type)
    CASES["codec:decoded"] += 1
    return value


@FUZZ
@given(message_type=hs.sampled_from(COMMANDS), headers=schema_headers, data=hs.data())
def test_command_decoder_raises_only_request_errors(message_type: type[Message], headers: Any, data: Any) -> None:
    _expect_request_error_or_value(message_type, _message_bytes(message_type, data), headers)


@FUZZ
@given(headers=schema_headers, data=hs.data())
def test_agent_command_decode_path_raises_only_request_errors(headers: Any, data: Any) -> None:
    command = _expect_request_error_or_value(NodeStepCommand, _message_bytes(NodeStepCommand, data), headers)
    if command is not None:
        assert isinstance(wrong_target(command, "c-1", "n-1"), str)


@dataclass
class _Msg:
    subject: str
    data: bytes
    headers: dict[str, str] | None


@dataclass
class _Model:
    """Accepts every decoded heartbeat; the fuzz target is the decode, not the health rules."""

    observed: list[Heartbeat] = field(default_factory=list)
    clusters: dict[str, Any] = field(default_factory=dict)  # no tracked cluster: the quota does not apply

    def begin(self, now: float, wall: float) -> None:
        pass

    def observe(self, hb: Heartbeat) -> bool:
        self.observed.append(hb)
        return True


def _ingest() -> Ingest:
    return Ingest(
        _Model(),  # type: ignore[arg-type]
        NoiseWindow(window_s=60.0),
        lambda _cluster: NoiseReason.UNKNOWN_CLUSTER,
        max_bytes=DEFAULT_MAX_MESSAGE_BYTES,
        now=lambda: (0.0, 0.0),
    )


@FUZZ
@given(headers=schema_headers, batch=hs.integers(1, 8), data=hs.data())
def test_heartbeat_ingest_never_raises_and_accounts_for_every_message(headers: Any, batch: int, data: Any) -> None:
    ingest = _ingest()
    good = msgspec.json.encode(sample_body(Heartbeat, full=True))
    messages = [_Msg("fleet.v1.hb.id-1.id-1", _message_bytes(Heartbeat, data), headers) for _ in range(batch)]
    messages.append(_Msg("fleet.v1.hb.id-1.id-1", good, None))  # a good one behind the bad ones
    ingest._buffer.extend(messages)  # type: ignore[arg-type]
    ingest.flush()
    assert ingest.received == len(messages)
    assert ingest.applied + sum(ingest.dropped.values()) == len(messages)
    assert ingest.applied >= 1, "the good heartbeat behind the bad ones was not applied"
    CASES["heartbeat:messages"] += len(messages)


def _intake() -> Intake:
    def noop(_event: Any, _tx: Any, _now: Any) -> None:
        return None

    return Intake(purpose="fuzz", filter_subjects=[], handlers=dict.fromkeys(EVENTS, noop), engine=None, run_work=None)  # type: ignore[arg-type]


INTAKE = _intake()


@FUZZ
@given(message_type=hs.sampled_from(EVENTS), header_kind=hs.sampled_from(["own", "random"]), data=hs.data())
def test_orchestrator_intake_decode_never_raises(message_type: type[Message], header_kind: str, data: Any) -> None:
    headers = {H_SCHEMA: schema_id(message_type)} if header_kind == "own" else data.draw(schema_headers)
    outcome = INTAKE._decode(_Msg("fleet.v1.evt.x", _message_bytes(message_type, data), headers))  # type: ignore[arg-type]
    if outcome is None:
        CASES["intake:ignored"] += 1
    elif outcome[0] is None:
        assert isinstance(outcome[1], str) and outcome[1]
        CASES["intake:dead-letter"] += 1
    else:
        assert isinstance(outcome[1], outcome[0])
        CASES["intake:decoded"] += 1


def _peak(run: Any) -> int:
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    "name, payload",
    [
        ("random 1 MiB", os.urandom(1024 * 1024)),
        ("nested under the limit", b"[" * (DEFAULT_MAX_MESSAGE_BYTES - 1)),
        ("long array under the limit", b"[" + b"1," * (DEFAULT_MAX_MESSAGE_BYTES // 2 - 2) + b"1]"),
        ("long string under the limit", b'{"x":"' + b"a" * (DEFAULT_MAX_MESSAGE_BYTES - 16) + b'"}'),
    ],
)
def test_decoders_memory_is_bounded_on_large_inputs(name: str, payload: bytes) -> None:
    hb_schema = {H_SCHEMA: schema_id(Heartbeat)}

    def every_decoder() -> None:
        decoded: list[type[Message]] = [*COMMANDS, NodeStepCommand]
        for message_type in decoded:
            with contextlib.suppress(RequestError):
                codec.decode(payload, message_type, max_bytes=DEFAULT_MAX_MESSAGE_BYTES)
        ingest = _ingest()
        ingest._buffer.append(_Msg("fleet.v1.hb.a.b", payload, hb_schema))  # type: ignore[arg-type]
        ingest.flush()
        assert ingest.applied == 0
        for message_type in EVENTS:
            INTAKE._decode(_Msg("fleet.v1.evt.x", payload, {H_SCHEMA: schema_id(message_type)}))  # type: ignore[arg-type]

    peak = _peak(every_decoder)
    CASES["memory:large-inputs"] += 1
    print(f"\n{name}: {len(payload)} bytes through every decoder, tracemalloc peak {peak / 1024:.0f} KiB")
    assert peak < MEMORY_BOUND_BYTES, f"{name}: peak {peak} bytes over the bound {MEMORY_BOUND_BYTES}"


BUG = (
    "msgspec raises UnicodeDecodeError (not DecodeError) on invalid UTF-8 inside a JSON string; "
    "{where} does not catch it"
)


def test_codec_decode_answers_invalid_utf8_with_a_request_error() -> None:
    """Regression (msgspec raises UnicodeDecodeError for bad UTF-8 in a string): every command handler and the
    node-agent's CommandConsumer.handle (which catches only RequestError) go through codec.decode."""
    with pytest.raises(RequestError) as caught:
        codec.decode(BAD_UTF8, NodeStepCommand, max_bytes=DEFAULT_MAX_MESSAGE_BYTES)
    assert caught.value.code == ErrorCode.MALFORMED


def test_heartbeat_ingest_drops_invalid_utf8_and_keeps_the_batch() -> None:
    """Regression: flush raised mid-batch on invalid UTF-8 and the good heartbeats buffered with it were lost."""
    ingest = _ingest()
    good = msgspec.json.encode(sample_body(Heartbeat, full=True))
    bad = good.replace(b'"id-1"', b'"\xe9d-1"', 1)
    ingest._buffer.extend([_Msg("fleet.v1.hb.id-1.id-1", bad, None), _Msg("fleet.v1.hb.id-1.id-1", good, None)])  # type: ignore[list-item]
    ingest.flush()
    assert ingest.applied == 1 and ingest.dropped[ErrorCode.MALFORMED] == 1


def test_orchestrator_intake_dead_letters_invalid_utf8() -> None:
    """Regression: _decode raised out of handle_batch, which ended Intake.run (one such event stopped the intake)."""
    message_type = next(t for t in EVENTS if t.SCHEMA == "agent.NodeStepReported")
    body = msgspec.json.encode(sample_body(message_type, full=True)).replace(b'"id-1"', b'"\xe9d-1"', 1)
    outcome = INTAKE._decode(_Msg("fleet.v1.evt.x", body, {H_SCHEMA: schema_id(message_type)}))  # type: ignore[arg-type]
    assert outcome is not None and outcome[0] is None
