"""Importable helpers for integration tests (conftest.py cannot be imported by name under importlib mode)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from nats.aio.client import Client
from nats.aio.msg import Msg

from flotilla_client import localfleet
from flotilla_contracts import catalogue
from flotilla_contracts.envelope import H_SCHEMA, schema_id
from flotilla_contracts.streams import EVENT_STREAMS
from flotilla_contracts.subjects import Service
from flotilla_contracts.v1.registration import JoinReply, JoinRequest
from flotilla_runtime import codec, logins
from flotilla_runtime.natsconn import connect_options
from flotilla_testkit import ConditionNotMet, eventually


def start_service(service: Service, nats_url: str, state: Path, **settings: str) -> subprocess.Popen[bytes]:
    """One service as its own process (the same launcher `flotilla up` uses); log at state/logs/<service>.log."""
    _, process = localfleet.start_service(service, state, nats_url, settings)
    return process


def service_log(state: Path, service: Service) -> str:
    return localfleet.log_path(state, service.value).read_text()[-3000:]


async def fleet_events(nc: Client, within_s: float = 10.0) -> list[Msg]:
    """Every event, FLEET_EVENTS and FLEET_REPORTS (members' reports) merged by time, each in stream order
    (ephemeral ordered consumers: nothing left on the server)."""
    js = nc.jetstream()
    merged: list[Msg] = []
    for spec in EVENT_STREAMS:
        info = await js.stream_info(spec.name)
        sub = await js.subscribe("fleet.v1.evt.>", ordered_consumer=True, stream=spec.name)
        try:
            merged += [await sub.next_msg(within_s) for _ in range(info.state.messages)]
        finally:
            await sub.unsubscribe()
    return sorted(merged, key=lambda msg: msg.metadata.timestamp)  # stable: stream order on equal times


@dataclass
class WatchedConnection:
    """A raw connection with the server's asynchronous errors collected (nats-py does not raise on a
    permissions violation: the server reports it on the connection)."""

    nc: Client
    errors: list[str] = field(default_factory=list)

    async def denied(self, what: str, within_s: float = 3.0) -> bool:
        """True once the server reported a permissions violation naming `what`; False when none came within
        `within_s` (a caller that expects none asserts on False, after that long)."""
        try:
            await eventually(
                lambda: self.reported(what),
                f"a permissions violation naming {what!r}",
                timeout_s=within_s,
                every_s=0.02,
            )
        except ConditionNotMet:
            return False
        return True

    def reported(self, what: str) -> bool:
        """Whether the server has reported a permissions violation naming `what` so far."""
        return any("permissions violation" in e.lower() and what.lower() in e.lower() for e in self.errors)


async def connect_watched(url: str, connect_timeout: float = 10) -> WatchedConnection:
    """Connect the way the services do (natsconn.connect_options: inbox prefix, TLS with FLOTILLA_NATS_CA),
    without reconnecting, collecting the server's errors."""
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await logins.connect(
        url, error_cb=on_error, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=connect_timeout,
        **connect_options(url),
    )  # fmt: skip
    return WatchedConnection(nc, errors)


async def send_join(nc: Client, request: JoinRequest) -> JoinReply:
    """Send a join as an agent does (on a connection as `join.<nonce>`); the reply's data, asserted accepted."""
    raw = await nc.request(
        catalogue.subject_for(JoinRequest),
        codec.encode(request),
        timeout=10,
        headers={H_SCHEMA: schema_id(JoinRequest)},
    )
    reply = codec.decode_reply(raw.data, JoinReply)
    assert reply.ok and reply.data is not None, reply.error
    return reply.data
