"""A real nats-server in config (centralized) mode with an auth callout answered by a responder built on natsjwt:
the harness of test_natsjwt_server.py and test_callout_lifeline.py (the `callout` fixture is in conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from natsjwt_support import ALICE

from flotilla_client.natsserver import NatsServer, free_port
from flotilla_registration.natsjwt import (
    AuthRequest,
    CalloutError,
    ResponsePermission,
    decode_request,
    response_jwt,
    user_jwt,
)
from flotilla_registration.natskeys import new_account_seed, public_key
from flotilla_runtime import logins

TIMEOUT_S = 10.0


@dataclass
class Responder:
    """The callout service under test: alice/good gets ALICE's permissions (with `resp`), anyone else an error."""

    seed: str
    resp: ResponsePermission | None = ALICE.resp
    ttl_s: int = 0  # > 0: alice's grant expires after this long (the server then ends her connection)
    refuse: bool = False  # refuse everyone (a deregistered credential)
    silent: bool = False  # answer nobody (a callout that times out)
    requests: list[AuthRequest] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)

    async def handle(self, msg: Msg) -> None:
        try:
            request = decode_request(msg.data)
        except CalloutError as exc:
            self.bad.append(str(exc))
            return
        self.requests.append(request)
        self.raw.append(msg.data)
        if self.silent:
            return
        await msg.respond(self.answer(request).encode())

    def answer(self, request: AuthRequest) -> str:
        opts, server = request.connect_opts, request.server_id.id
        if self.refuse or (opts.user, opts.password) != ("alice", "good"):
            error = f"unknown user {opts.user!r} or wrong password"
            return response_jwt(self.seed, user_nkey=request.user_nkey, server_id=server, error=error)
        permissions = msgspec.structs.replace(ALICE, resp=self.resp)
        user = user_jwt(
            self.seed,
            user_nkey=request.user_nkey,
            account="FLEET",
            name="alice",
            permissions=permissions,
            expires_in_s=self.ttl_s,
        )
        return response_jwt(self.seed, user_nkey=request.user_nkey, server_id=server, user_jwt=user)


@dataclass
class Callout:
    server: NatsServer
    auth: Client  # the callout user: FLEET, no permission limits, bypasses the callout
    responder: Responder

    async def alice(self, password: str = "good", user: str = "alice") -> tuple[Client, list[Exception]]:
        """Connect through the callout; the list collects what the server reports via -ERR (permission denials)."""
        errors: list[Exception] = []

        async def on_error(exc: Exception) -> None:
            errors.append(exc)

        client = await logins.connect(
            self.server.url,
            user=user,
            password=password,
            inbox_prefix="_INBOX.alice",
            error_cb=on_error,
            allow_reconnect=False,
            max_reconnect_attempts=0,
            connect_timeout=TIMEOUT_S,
            answer_timeout_s=TIMEOUT_S,  # answered late on a loaded machine: wait for it
        )
        return client, errors


def callout_config(issuer: str) -> str:
    return f"""
accounts {{
  FLEET {{ jetstream: enabled, users: [ {{ user: auth, password: authpw }} ] }}
  SYS {{}}
}}
system_account: SYS
authorization {{
  auth_callout {{ issuer: {issuer}, auth_users: [ auth ], account: FLEET }}
}}
"""


@asynccontextmanager
async def running_callout(tmp_path: Path) -> AsyncIterator[Callout]:
    """nats-server with the callout on a free port, and the responder subscribed."""
    seed = new_account_seed()
    server = NatsServer(
        state_dir=tmp_path / "nats",
        port=free_port(),
        log_file=tmp_path / "nats-server.log",
        extra_config=callout_config(public_key(seed)),
    )
    server.start()
    try:
        auth = await logins.connect(server.url, user="auth", password="authpw", connect_timeout=TIMEOUT_S)
        responder = Responder(seed)
        try:
            await auth.subscribe("$SYS.REQ.USER.AUTH", cb=responder.handle)
            await auth.flush()
            yield Callout(server, auth, responder)
            assert responder.bad == [], "the responder got requests it could not decode"
        finally:
            await auth.close()
    finally:
        server.stop()


class Request:
    """An auth callout request as `AuthCallout.handle` sees it, without a server: its data, and the answers given."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.answers: list[bytes] = []

    async def respond(self, data: bytes) -> None:
        self.answers.append(data)
