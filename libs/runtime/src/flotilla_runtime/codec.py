"""Decoding and encoding of Flotilla messages, turning every kind of bad input into a typed RequestError."""

from __future__ import annotations

import re
from collections.abc import Mapping
from itertools import accumulate
from typing import Any, TypeVar

import msgspec

from flotilla_contracts.envelope import (
    ERROR_SCHEMA,
    H_SCHEMA,
    H_SERVICE_ERROR,
    H_SERVICE_ERROR_CODE,
    ErrorBody,
    Message,
    Reply,
    SchemaIdError,
    parse_schema_id,
    schema_id,
)
from flotilla_contracts.errors import STATUS, ErrorCode
from flotilla_contracts.ids import TOKEN_PATTERN
from flotilla_runtime.errors import RequestError

M = TypeVar("M", bound=Message)

# Deepest JSON nesting a message may have: Flotilla's own messages nest under 10 levels and a Kubernetes manifest
# carried in one rarely passes 30; far deeper input only exists to exhaust the decoder's stack.
MAX_DEPTH = 128

_encoder = msgspec.json.Encoder()
_PATH_RE = re.compile(r" - at (?:`key` in )?`\$(?P<path>[^`]*)`$")
_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
_AS_SQUARE = bytes.maketrans(b"{}", b"[]")
_STEP = [0] * 256
_STEP[ord("[")] = _STEP[ord("{")] = 1
_STEP[ord("]")] = _STEP[ord("}")] = -1


def encode(value: Any) -> bytes:
    """JSON bytes of a Struct, envelope or plain value."""
    return _encoder.encode(value)


def _decoder(message_type: type[M]) -> msgspec.json.Decoder[M]:
    decoder = _decoders.get(message_type)
    if decoder is None:
        decoder = _decoders[message_type] = msgspec.json.Decoder(message_type)
    return decoder


def _field_of(error: msgspec.ValidationError) -> str:
    """`$.nodes[0].name` -> `nodes[0].name`, from msgspec's error text; empty for the whole body."""
    match = _PATH_RE.search(str(error))
    return match.group("path").lstrip(".") if match else ""


def nesting_depth(data: bytes) -> int:
    """How deep the arrays and objects of a JSON text nest (brackets inside strings do not count)."""
    brackets = _STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    return max(accumulate(_STEP[byte] for byte in brackets), default=0)


def _nests_deeper(data: bytes, limit: int) -> bool:
    """Whether the brackets of `data`, strings included, nest deeper than `limit`: C-speed passes only.

    Every pass strips the innermost pairs, so a text `limit` deep is empty after `limit` passes.
    """
    brackets = data.translate(_AS_SQUARE, _NOT_BRACKETS)
    for _ in range(limit):
        inner = brackets.replace(b"[]", b"")
        if len(inner) == len(brackets):  # no pair left: what remains is unbalanced, maybe a long run of openers
            return len(brackets) > limit
        brackets = inner
    return bool(brackets)


def too_deep(limit: int = MAX_DEPTH) -> RequestError:
    return RequestError(
        ErrorCode.MALFORMED,
        f"body is nested deeper than {limit} levels of arrays and objects, the limit; it was not read",
        limit=limit,
    )


def check_depth(data: bytes, limit: int = MAX_DEPTH) -> None:
    """Refuse JSON nested deeper than `limit` before a decoder recurses into it (a RecursionError otherwise).

    Cheap tests settle almost every message: fewer brackets than the limit cannot nest deeper, nor can
    brackets that do not nest deeper even counting those inside strings. Only a message that does is measured
    exactly (strings removed).
    """
    if data.count(b"[") + data.count(b"{") <= limit or not _nests_deeper(data, limit):
        return
    if nesting_depth(data) > limit:
        raise too_deep(limit)


def check_schema_header(headers: Mapping[str, str] | None, expected: type[Message]) -> None:
    """Refuse a Flotilla-Schema header naming another message or a version this side does not serve.

    A message without the header is read as the expected type's current version, so plain NATS
    tools (`nats req`) can send commands.
    """
    declared = (headers or {}).get(H_SCHEMA)
    if not declared:
        return
    try:
        name, version = parse_schema_id(declared)
    except SchemaIdError as exc:
        raise RequestError(ErrorCode.WRONG_SCHEMA, str(exc), field=H_SCHEMA) from None
    if name != expected.SCHEMA:
        raise RequestError(
            ErrorCode.WRONG_SCHEMA,
            f"this subject takes {schema_id(expected)}, not {declared}",
            field=H_SCHEMA,
            expected=schema_id(expected),
        )
    if version != expected.VERSION:
        raise RequestError(
            ErrorCode.UNSUPPORTED_VERSION,
            f"{name} v{version} is not served here; this service speaks {schema_id(expected)}",
            field=H_SCHEMA,
            supported=[schema_id(expected)],
        )


def decode(data: bytes, message_type: type[M], *, headers: Mapping[str, str] | None = None, max_bytes: int) -> M:
    """Decode one message or raise RequestError with a stable code and the offending field."""
    if len(data) > max_bytes:
        raise RequestError(
            ErrorCode.TOO_LARGE,
            f"message is {len(data)} bytes; the limit is {max_bytes}",
            size=len(data),
            limit=max_bytes,
        )
    check_schema_header(headers, message_type)
    check_depth(data)
    try:
        return _decoder(message_type).decode(data or b"{}")
    except RecursionError:  # the stack was already deep when we were called; same answer as check_depth
        raise too_deep() from None
    except msgspec.ValidationError as exc:
        field = _field_of(exc)
        text = str(exc)
        if TOKEN_PATTERN in text:
            raise RequestError(
                ErrorCode.INVALID_ID,
                f"{field or 'id'} is not a valid id: use 1-128 of A-Z a-z 0-9 _ - (no dots, spaces or wildcards)",
                field=field,
            ) from None
        if not field and text.startswith("Expected `object`"):
            raise RequestError(ErrorCode.MALFORMED, f"body must be a JSON object: {text}") from None
        raise RequestError(
            ErrorCode.INVALID_FIELD, f"{field or 'body'}: {_PATH_RE.sub('', text)}", field=field
        ) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # msgspec raises the latter for bad UTF-8 in strings
        raise RequestError(ErrorCode.MALFORMED, f"body is not valid JSON: {exc}") from None


def ok_reply(data: Message) -> tuple[bytes, dict[str, str]]:
    """Body and headers of a successful reply."""
    return encode(Reply(ok=True, data=data)), {H_SCHEMA: schema_id(type(data))}


def error_reply(error: ErrorBody) -> tuple[bytes, dict[str, str]]:
    """Body and headers of an error reply, with the NATS micro error headers for standard tools."""
    headers = {
        H_SCHEMA: ERROR_SCHEMA,
        H_SERVICE_ERROR: f"{error.code}: {error.message}"[:512],
        H_SERVICE_ERROR_CODE: str(STATUS.get(error.code, 500)),
    }
    return encode(Reply[Any](ok=False, error=error)), headers


def decode_reply(data: bytes, data_type: type[M]) -> Reply[M]:
    """Client side: the reply envelope with its data typed."""
    return msgspec.json.decode(data, type=Reply[data_type])  # type: ignore[valid-type]
