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
