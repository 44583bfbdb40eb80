"""Every kind of bad input becomes a RequestError with a stable code and the field at fault."""

import msgspec
import pytest

from flotilla_contracts.envelope import Message, Reply
from flotilla_contracts.errors import ErrorCode
from flotilla_contracts.ids import ClusterIdField, NodeNameField
from flotilla_runtime import codec
from flotilla_runtime.errors import RequestError


class Node(msgspec.Struct, frozen=True, kw_only=True):
    name: NodeNameField
    cpus: int = 1


class Sample(Message, frozen=True, kw_only=True):
    SCHEMA = "test.Sample"

    cluster_id: ClusterIdField
    count: int = 0
    nodes: list[Node] = []


def refused(data: bytes, headers: dict[str, str] | None = None, max_bytes: int = 4096) -> RequestError:
    with pytest.raises(RequestError) as caught:
        codec.decode(data, Sample, headers=headers, max_bytes=max_bytes)
    return caught.value


def test_valid_body_decodes() -> None:
    sample = codec.decode(b'{"cluster_id": "prod-1", "nodes": [{"name": "n1"}]}', Sample, max_bytes=4096)
    assert sample.cluster_id == "prod-1"
    assert sample.nodes[0].name == "n1"


def test_malformed_json() -> None:
    assert refused(b'{"cluster_id": ').code is ErrorCode.MALFORMED


def test_json_that_is_not_an_object() -> None:
    error = refused(b"[1, 2]")
    assert error.code is ErrorCode.MALFORMED
    assert "object" in error.message


def test_wrong_type_names_the_field() -> None:
    error = refused(b'{"cluster_id": "c1", "count": "three"}')
    assert error.code is ErrorCode.INVALID_FIELD
    assert error.details["field"] == "count"
    assert "count" in error.message


def test_missing_field_is_named() -> None:
    error = refused(b"{}")
    assert error.code is ErrorCode.INVALID_FIELD
    assert "cluster_id" in error.message


@pytest.mark.parametrize("bad_id", ["a.b", "a*", "a b", ">", "", "x" * 129])
def test_ids_with_dots_wildcards_or_spaces(bad_id: str) -> None:
    error = refused(msgspec.json.encode({"cluster_id": bad_id}))
    assert error.code is ErrorCode.INVALID_ID
    assert error.details["field"] == "cluster_id"


def test_nested_id_is_named_with_its_path() -> None:
    error = refused(b'{"cluster_id": "c1", "nodes": [{"name": "ok"}, {"name": "node.example.com"}]}')
    assert error.code is ErrorCode.INVALID_ID
    assert error.details["field"] == "nodes[1].name"


def test_oversized_message() -> None:
    data = b'{"cluster_id": "c1", "pad": "' + b"x" * 5000 + b'"}'
    error = refused(data)
    assert error.code is ErrorCode.TOO_LARGE
    assert error.details == {"size": len(data), "limit": 4096}


def test_schema_header_of_another_message() -> None:
    error = refused(b'{"cluster_id": "c1"}', headers={"Flotilla-Schema": "test.Other/v1"})
    assert error.code is ErrorCode.WRONG_SCHEMA


def test_unknown_schema_version() -> None:
    error = refused(b'{"cluster_id": "c1"}', headers={"Flotilla-Schema": "test.Sample/v2"})
    assert error.code is ErrorCode.UNSUPPORTED_VERSION
    assert error.details["supported"] == ["test.Sample/v1"]


def test_unparseable_schema_header() -> None:
    assert refused(b'{"cluster_id": "c1"}', headers={"Flotilla-Schema": "Sample"}).code is ErrorCode.WRONG_SCHEMA


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    sample = codec.decode(b'{"cluster_id": "c1", "added_in_v1_1": true}', Sample, max_bytes=4096)
    assert sample.cluster_id == "c1"


def test_error_reply_carries_micro_headers_and_round_trips() -> None:
    body, headers = codec.error_reply(RequestError(ErrorCode.NOT_FOUND, "no cluster c9", cluster="c9").to_body())
    assert headers["Nats-Service-Error-Code"] == "404"
    reply = codec.decode_reply(body, Sample)
    assert not reply.ok
    assert reply.error is not None
    assert reply.error.code is ErrorCode.NOT_FOUND


def test_ok_reply_round_trips_typed_data() -> None:
    body, headers = codec.ok_reply(Sample(cluster_id="c1", count=2))
    assert headers["Flotilla-Schema"] == "test.Sample/v1"
    reply: Reply[Sample] = codec.decode_reply(body, Sample)
    assert reply.ok
    assert reply.data == Sample(cluster_id="c1", count=2)


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000,
        b'{"cluster_id": "c1", "extra": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"cluster_id": "c1", "extra": ' + b'{"a":' * 100_000 + b"1" + b"}" * 100_001,
        b'{"cluster_id": "c1", "extra": ' + b"[" * 129 + b"]" * 129 + b"}",
    ],
)
def test_json_nested_too_deep_is_malformed_with_the_limit(body: bytes) -> None:
    error = refused(body, max_bytes=1_000_000)
    assert error.code is ErrorCode.MALFORMED
    assert f"nested deeper than {codec.MAX_DEPTH} levels" in error.message


def test_nesting_up_to_the_limit_and_brackets_in_strings_are_fine() -> None:
    at_limit = b'{"cluster_id": "c1", "extra": ' + b"[" * 127 + b"]" * 127 + b"}"
    assert codec.decode(at_limit, Sample, max_bytes=4096).cluster_id == "c1"
    brackets = b'{"cluster_id": "c1", "nodes": [{"name": "n\\"[[[' + b"[" * 500 + b'"}]}'
    assert codec.nesting_depth(brackets) == 3
    with pytest.raises(RequestError) as caught:  # a name with brackets is refused for what it is, not its depth
        codec.decode(brackets, Sample, max_bytes=4096)
    assert caught.value.code is ErrorCode.INVALID_ID


def test_nesting_depth_counts_arrays_and_objects() -> None:
    assert codec.nesting_depth(b"{}") == 1
    assert codec.nesting_depth(b'{"a": [{"b": []}, []]}') == 4
    assert codec.nesting_depth(b'"[[["') == 0


def test_a_decoder_that_runs_out_of_stack_anyway_answers_malformed() -> None:
    import inspect
    import sys

    body = b'{"cluster_id": "c1", "extra": ' + b"[" * 100 + b"]" * 100 + b"}"
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(len(inspect.stack()) + 60)  # the caller's stack is already deep: 100 levels do not fit
    try:
        error = refused(body)
    finally:
        sys.setrecursionlimit(limit)
    assert error.code is ErrorCode.MALFORMED and "nested deeper" in error.message
