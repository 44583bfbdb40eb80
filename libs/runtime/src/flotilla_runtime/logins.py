"""Logging in to nats-server: a login it answers late, and a bound on logins in flight.

A login the server is still deciding on must be finished, not thrown away: nats-py's connect takes the first line
after its CONNECT and PING for the server's answer, and that line is not always the answer. nats-server sends its
first PING 2-2.4 s after it accepts the socket, even while the auth callout has not answered yet (or the client was
slow to send its CONNECT on a starved machine), and a server in a cluster sends an INFO whenever the cluster's
members change. Given either, nats-py returns a client left CONNECTING for good, its flusher stopped: nothing it
publishes or subscribes is ever written, while the server holds the connection as authorized (0 subscriptions, 0
messages in) until it closes it as stale minutes later (docs/scale.md, "Connections that went silent"). The answer
to connect's PING is still on its way (a PONG once the CONNECT is accepted, an `-ERR` if refused): `ask_again`
waits for it, `login_answered` does that for a client connected without a lifeline (`connect` connects and does
it), and `Lifeline` does it for its own.

A process that logs many identities in (the packed sim: thousands of nodes, each its own login) bounds how many
are in flight at once with a `LoginGate`: with all of them in flight on a starved machine, its event loop fell
so far behind that each CONNECT went out after the server's 5 s authorization timer had closed the socket, and
every retry wave failed the same way (docs/scale.md, "A sim logging all its nodes in at once").
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client

SLOW_LOGIN_S = 2.0  # a login answered later than this: the authorizer is queueing (nats-server gives up at 5 s)


@dataclass
class LoginGate:
    """At most `window` logins of one process in flight at once, the window following how fast the server answers
    them, as TCP's congestion window does: from 8 it grows by one per login answered within `slow_s` (doubling
    each window) until the first slow one, then by one per window; a login slower than `slow_s` (or one the server
    gave up on) halves it, at most once per `slow_s`, never below `floor` nor above `limit`. A place is held from
    the TCP connect to the server's answer and given back before backing off. So sim processes logging in at once
    share the auth callout's rate instead of queueing past the server's authorization timeout together (at
    10,000 x 10, 14 sims with 64 logins in flight each had most logins time out; docs/scale.md)."""

    limit: int
    floor: int = 2
    slow_s: float = SLOW_LOGIN_S
    window: float = field(init=False)
    admitted: int = 0  # attempts let through, in all
    in_flight: int = 0
    peak: int = 0  # the most in flight at once
    waiting: int = 0
    slow: int = 0  # logins answered later than slow_s
    _slow_start: bool = field(default=True, init=False, repr=False)
    _cut_at: float = field(default=-1e9, init=False, repr=False)
    _waiters: deque[asyncio.Future[None]] = field(default_factory=deque, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError(f"a login gate needs at least one place (got {self.limit})")
        self.floor = max(1, min(self.floor, self.limit))
        self.window = float(max(self.floor, min(self.limit, 8)))

    async def __aenter__(self) -> LoginGate:
        if self._waiters or self.in_flight >= int(self.window):
            place: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(place)
            self.waiting += 1
            try:
                await place  # given a place by _wake, which counted it in flight
            except asyncio.CancelledError:
                if place.done() and not place.cancelled():
                    self._give_back()
                raise
            finally:
                self.waiting -= 1
        else:
            self.in_flight += 1
        self.admitted += 1
        self.peak = max(self.peak, self.in_flight)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self._give_back()

    def took(self, seconds: float, now: float | None = None) -> None:
        """Feedback from one login: how long the server took to answer it (or to give up on it)."""
        now = time.monotonic() if now is None else now
        if seconds > self.slow_s:
            self.slow += 1
            self._slow_start = False
            if now - self._cut_at >= self.slow_s:
                self.window, self._cut_at = max(float(self.floor), self.window / 2), now
        else:
            self.window = min(float(self.limit), self.window + (1.0 if self._slow_start else 1.0 / self.window))
        self._wake()

    def _give_back(self) -> None:
        self.in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_flight < int(self.window):
            place = self._waiters.popleft()
            if not place.done():
                self.in_flight += 1
                place.set_result(None)


def resume(client: Client) -> None:
    """What nats-py's connect does on the server's PONG, done late: the client is connected, a flusher writes
    what it queued meanwhile (its subscriptions, its first requests)."""
    client._status = Client.CONNECTED
    if client._flusher_task is None or client._flusher_task.done():
        client._flusher_task = asyncio.get_running_loop().create_task(client._flusher())
    if client._pending_data_size > 0 and client._flush_queue is not None and not client._flush_queue.full():
        client._flush_queue.put_nowait(asyncio.get_running_loop().create_future())


def ask_again(client: Client, answer: asyncio.Future[bool]) -> None:
    """Have `answer` done on the server's answer to connect's own PING (a PONG; a refusal is an `-ERR` that closes
    the client), which nats-py's connect did not wait for. Call it as soon as connect returned, before anything
    awaits: the client's read loop has not run yet, so that PONG cannot have been read and dropped. No PING of our
    own: its PONG would be one more than nats-py waits for and would answer the client's next flush before the
    server had read what came before that flush (a subscription not yet in place: "no responders")."""
    client._pongs.append(answer)
    if client._transport is not None:  # the answer to a PING of the server's that nats-py took for its answer
        client._transport.write(b"PONG\r\n")


async def connect(servers: str | list[str], answer_timeout_s: float = 10.0, **options: Any) -> Client:
    """`nats.connect(servers, **options)` for a client without a lifeline (a one-shot tool, a test), returned
    only once the server answered its login (`login_answered`); closed again if it refused or did not answer."""
    client = await nats.connect(servers, **options)
    try:
        return await login_answered(client, answer_timeout_s)  # at once: see ask_again
    except BaseException:
        with contextlib.suppress(Exception):
            await client.close()
        raise


async def login_answered(client: Client, timeout_s: float = 10.0) -> Client:
    """For a client connected without a lifeline (a one-shot tool, a test counting the server's denials): if
    nats-py returned it before the server answered its login (see the module docstring), wait for the answer and
    let the client work. Raises the server's refusal (nats-py's AuthorizationError) if it refused the login,
    nats-py's TimeoutError if it gave no answer within `timeout_s`. Await it as soon as connect returned (see
    `ask_again`)."""
    if not client.is_connecting:
        return client
    answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    ask_again(client, answer)
    deadline = time.monotonic() + timeout_s
    while not answer.done() and not client.is_closed and time.monotonic() < deadline:
        await asyncio.wait({answer}, timeout=min(0.1, max(0.0, deadline - time.monotonic())))
    if client.is_closed:
        raise client.last_error or nats.errors.ConnectionClosedError()
    if not answer.done() or answer.cancelled():
        raise nats.errors.TimeoutError
    resume(client)
    return client
