"""Requests past their sender's reply-by time: the pure rule, and a real nats-server with a service's command
router dropping them unanswered while it answers the awaited ones."""

from __future__ import annotations

import time

import nats
import nats.errors
import pytest
from hypothesis import given
from hypothesis import strategies as st

from flotilla_client.natsserver import NatsServer
from flotilla_contracts.envelope import H_REPLY_BY
from flotilla_contracts.subjects import Service
from flotilla_runtime import logins
from flotilla_runtime.bus import make_broker
from flotilla_runtime.commands import CommandRouter
from flotilla_runtime.replyby import SKEW_S, lateness, reply_by_headers
from flotilla_testkit import eventually

from .test_commands import SUBJECT, ClusterView, GetCluster


def test_a_request_is_late_only_past_its_reply_by_time_and_the_skew_allowance() -> None:
    headers = reply_by_headers(5.0, now=1_000.0)
    assert lateness(headers, now=1_004.0) == 0.0
    assert lateness(headers, now=1_005.0 + SKEW_S) == 0.0
    assert lateness(headers, now=1_010.0 + SKEW_S) == pytest.approx(5.0)


@given(st.one_of(st.none(), st.dictionaries(st.sampled_from([H_REPLY_BY, "other"]), st.text(max_size=20))))
def test_no_header_or_an_unreadable_one_never_drops_a_request(headers: dict[str, str] | None) -> None:
    if headers and H_REPLY_BY in headers:
        try:
            float(headers[H_REPLY_BY])
            return  # a readable time: the example above covers it
        except ValueError:
            pass
    assert lateness(headers, now=time.time() + 1e9) == 0.0


async def test_the_router_drops_a_request_nobody_waits_for_and_answers_the_next(nats_server: NatsServer) -> None:
    handled: list[str] = []
    router = CommandRouter(Service.REGISTRATION, max_message_bytes=2048)

    @router.command("clusters.get", GetCluster, ClusterView)
    async def get_cluster(request: GetCluster, _ctx: object) -> ClusterView:
        handled.append(request.cluster_id)
        return ClusterView(cluster_id=request.cluster_id, name="n")

    broker = make_broker(nats_server.url, "test")
    router.install(broker)
    await broker.start()
    client = await logins.connect(nats_server.url)
    try:
        stale = reply_by_headers(1.0, now=time.time() - 60.0)  # its sender gave up a minute ago
        with pytest.raises(nats.errors.TimeoutError):  # no answer at all: nothing published for it
            await client.request(SUBJECT, b'{"cluster_id": "stale"}', timeout=1.0, headers=stale)
        reply = await client.request(SUBJECT, b'{"cluster_id": "fresh"}', timeout=5.0, headers=reply_by_headers(5.0))
        assert b"fresh" in reply.data
        reply = await client.request(SUBJECT, b'{"cluster_id": "plain"}', timeout=5.0)  # no header: always served
        assert b"plain" in reply.data
        [endpoint] = [ep for ep in router.endpoints if ep.subject == SUBJECT]
        await eventually(lambda: endpoint.stats.num_expired == 1, "the stale request counted as expired")
        assert handled == ["fresh", "plain"], "the stale request never reached the handler"
    finally:
        await client.close()
        await broker.stop()
