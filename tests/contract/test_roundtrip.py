"""Every message survives encode/decode, minimal and full, and its JSON matches its committed schema."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from contract_samples import sample_body

from flotilla_contracts import schemagen
from flotilla_contracts.catalogue import message_types
from flotilla_contracts.envelope import Message, Reply, schema_id

MESSAGES = message_types()


def _committed_schema(message: type[Message]) -> dict[str, Any]:
    path = schemagen.REPO_ROOT / schemagen.V1_DIR / f"{message.SCHEMA}.json"
    return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


@pytest.mark.parametrize("full", [False, True], ids=["minimal", "full"])
@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: m.SCHEMA)
def test_round_trip(message: type[Message], full: bool) -> None:
    body = sample_body(message, full=full)
    value = msgspec.json.decode(msgspec.json.encode(body), type=message)
    encoded = msgspec.json.encode(value)
    again = msgspec.json.decode(encoded, type=message)
    assert again == value
    assert msgspec.json.encode(again) == encoded
    # Every field is on the wire (no omitted defaults), so old readers always see what they need.
    assert set(json.loads(encoded)) == {f.encode_name for f in msgspec.inspect.type_info(message).fields}  # type: ignore[attr-defined]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: m.SCHEMA)
def test_encoded_messages_validate_against_the_committed_schema(message: type[Message]) -> None:
    import jsonschema

    schema = _committed_schema(message)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for full in (False, True):
        value = msgspec.json.decode(msgspec.json.encode(sample_body(message, full=full)), type=message)
        validator.validate(json.loads(msgspec.json.encode(value)))
    assert schema["x-flotilla-schema"] == schema_id(message)


def test_reply_envelope_carries_data_or_error() -> None:
    from flotilla_contracts.envelope import ErrorBody
    from flotilla_contracts.errors import ErrorCode
    from flotilla_contracts.v1.heartbeat import HeartbeatConfig

    ok = msgspec.json.decode(msgspec.json.encode(Reply(ok=True, data=HeartbeatConfig())), type=Reply[HeartbeatConfig])
    assert ok.data == HeartbeatConfig()
    error = Reply[HeartbeatConfig](ok=False, error=ErrorBody(code=ErrorCode.INVALID_ID, message="cluster_id"))
    decoded = msgspec.json.decode(msgspec.json.encode(error), type=Reply[HeartbeatConfig])
    assert decoded.error is not None and decoded.error.code is ErrorCode.INVALID_ID


def test_times_are_timezone_aware() -> None:
    from flotilla_contracts.v1.deadletter import DeadLettered

    body = sample_body(DeadLettered, full=False)
    body["occurred_at"] = "2025-01-02T03:04:05"
    with pytest.raises(msgspec.ValidationError, match="timezone"):
        msgspec.json.decode(msgspec.json.encode(body), type=DeadLettered)
