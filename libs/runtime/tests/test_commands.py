"""Command handlers under TestNatsBroker: typed replies, typed errors, and the next message still served."""

import msgspec
from faststream.nats import TestNatsBroker

from flotilla_contracts.envelope import Message
from flotilla_contracts.errors import ErrorCode
from flotilla_contracts.ids import ClusterIdField
from flotilla_contracts.subjects import Service
from flotilla_runtime.bus import make_broker
from flotilla_runtime.commands import CommandContext, CommandRouter
from flotilla_runtime.errors import RequestError

SUBJECT = "fleet.v1.cmd.registration.clusters.get"


class GetCluster(Message, frozen=True, kw_only=True):
    SCHEMA = "test.GetCluster"
    cluster_id: ClusterIdField


class ClusterView(Message, frozen=True, kw_only=True):
    SCHEMA = "test.ClusterView"
    cluster_id: str
    name: str


def build() -> tuple[CommandRouter, object]:
    router = CommandRouter(Service.REGISTRATION, max_message_bytes=2048)

    @router.command("clusters.get", GetCluster, ClusterView)
    async def get_cluster(request: GetCluster, ctx: CommandContext) -> ClusterView:
        if request.cluster_id == "missing":
            raise RequestError(ErrorCode.NOT_FOUND, "no cluster 'missing'", cluster_id=request.cluster_id)
        if request.cluster_id == "boom":
            raise ZeroDivisionError("bug")
        return ClusterView(cluster_id=request.cluster_id, name=f"name-of-{request.cluster_id}")

    broker = make_broker("nats://127.0.0.1:1", "test")
    router.install(broker)
    return router, broker


async def ask(broker: object, body: bytes, headers: dict[str, str] | None = None) -> dict[str, object]:
    async with TestNatsBroker(broker) as test_broker:  # type: ignore[arg-type]
        reply = await test_broker.request(body, SUBJECT, headers=headers or {})
        decoded: dict[str, object] = msgspec.json.decode(reply.body)
        return decoded


async def test_valid_command_gets_typed_data() -> None:
    _, broker = build()
    reply = await ask(broker, b'{"cluster_id": "c1"}')
    assert reply == {"ok": True, "data": {"cluster_id": "c1", "name": "name-of-c1"}, "error": None}


async def test_each_bad_input_gets_its_code_and_the_next_message_is_served() -> None:
    router, broker = build()
    cases = [
        (b"{not json", {}, "malformed"),
        (b'{"cluster_id": 7}', {}, "invalid_field"),
        (b'{"cluster_id": "a.b"}', {}, "invalid_id"),
        (b'{"cluster_id": "a*"}', {}, "invalid_id"),
        (b'{"cluster_id": "c1"}', {"Flotilla-Schema": "test.Other/v1"}, "wrong_schema"),
        (b'{"cluster_id": "c1"}', {"Flotilla-Schema": "test.GetCluster/v9"}, "unsupported_version"),
        (b'{"cluster_id": "' + b"x" * 3000 + b'"}', {}, "too_large"),
        (b'{"cluster_id": "missing"}', {}, "not_found"),
        (b'{"cluster_id": "boom"}', {}, "internal"),
    ]
    async with TestNatsBroker(broker) as test_broker:  # type: ignore[arg-type]
        for body, headers, code in cases:
            reply = msgspec.json.decode((await test_broker.request(body, SUBJECT, headers=headers)).body)
            assert reply["ok"] is False, body
            assert reply["error"]["code"] == code, body
            after = msgspec.json.decode((await test_broker.request(b'{"cluster_id": "c2"}', SUBJECT)).body)
            assert after["ok"] is True
    stats = router.endpoints[0].stats
    assert (stats.num_requests, stats.num_errors) == (2 * len(cases), len(cases))
    assert stats.last_error.startswith("internal")


async def test_invalid_field_error_names_the_field() -> None:
    _, broker = build()
    reply = await ask(broker, b'{"cluster_id": 7}')
    error = reply["error"]
    assert isinstance(error, dict)
    assert error["details"] == {"field": "cluster_id"}


def build_failing(raised: Exception) -> object:
    router = CommandRouter(Service.REGISTRATION, max_message_bytes=300_000)

    @router.command("clusters.get", GetCluster, ClusterView)
    async def get_cluster(request: GetCluster, ctx: CommandContext) -> ClusterView:
        raise raised

    broker = make_broker("nats://127.0.0.1:1", "test")
    router.install(broker)
    return broker


async def test_a_full_disk_is_unavailable_with_disk_full_and_what_happens_next() -> None:
    import errno
    import sqlite3

    from flotilla_runtime.errors import DiskFullError, TemporaryError

    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = sqlite3.SQLITE_FULL  # type: ignore[attr-defined]
    for raised in [
        DiskFullError("the state database /s/registration.db", "database or disk is full"),
        full,
        OSError(errno.ENOSPC, "No space left on device", "/s/signing.key"),
    ]:
        reply = await ask(build_failing(raised), b'{"cluster_id": "c1"}')
        error = reply["error"]
        assert isinstance(error, dict)
        assert (error["code"], error["retryable"]) == ("unavailable", True), raised
        assert str(error["message"]).startswith("disk full: ") and "Free space" in str(error["message"])
    reply = await ask(build_failing(TemporaryError("the bus is reconnecting")), b'{"cluster_id": "c1"}')
    assert reply["error"] == {
        "code": "unavailable", "message": "the bus is reconnecting", "details": {"retry_after_s": 1.0},
        "retryable": True,
    }  # fmt: skip


async def test_a_number_that_overflows_in_the_handler_is_invalid_field_not_internal() -> None:
    reply = await ask(build_failing(OverflowError("date value out of range")), b'{"cluster_id": "c1"}')
    error = reply["error"]
    assert isinstance(error, dict)
    assert error["code"] == "invalid_field"
    assert "out of range" in str(error["message"])


async def test_json_nested_100k_deep_is_malformed_not_internal() -> None:
    broker = build_failing(AssertionError("the handler is never called"))
    reply = await ask(broker, b'{"cluster_id": "c1", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    error = reply["error"]
    assert isinstance(error, dict)
    assert error["code"] == "malformed" and "nested deeper than 128" in str(error["message"])
