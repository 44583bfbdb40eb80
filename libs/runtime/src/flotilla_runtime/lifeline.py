"""A NATS connection that never closes for good: auth errors reconnect (a fresh grant) with back-off, forever.

nats-py closes a connection on any server `-ERR` except a stale connection or a permissions violation:
`User Authentication Expired` (the auth callout's grant ran out), `Authorization Violation` (the callout
refused or timed out while the client was connected) and the like leave the client CLOSED, with every
subscription and consumer gone (nats-io/nats.py#1019; nats.go retries these). A `Lifeline` attached to a
client turns those errors into a reconnect, which sends CONNECT again, so the server asks the auth callout
again and the client gets a fresh grant; subscriptions are replayed by nats-py and publishes made meanwhile
are buffered and flushed. Reconnect attempts back off exponentially (with jitter) and never stop; so do the
attempts at a first connection made with `Lifeline.connect`.

The server tells the client only `Authorization Violation` whether registration refused the credential
(deregistered, revoked) or did not answer in time, so a refused connection keeps retrying at the longest
back-off, logs at ERROR when refusals begin and every `REFUSED_LOG_EVERY_S` after, and reports itself not
ready with that reason; it recovers by itself when the cause is gone.

A login the server is still deciding on is finished, not thrown away (`finish_login`): nats-server sends its
first PING 2-2.4 s after it starts processing a CONNECT, even while the auth callout has not answered yet, and
nats-py's connect takes the first line after its CONNECT and PING for the answer. Given that PING it returns a
client left CONNECTING for good, its flusher stopped: nothing it publishes or subscribes is ever written, while
the server holds the connection as authorized (0 subscriptions, 0 messages in) until it closes it as stale
minutes later (docs/scale.md, "Connections that went silent"). Attached to such a client, a lifeline waits for
the server's answer to a PING of its own (a PONG comes only once the CONNECT is accepted; a refusal is an
`-ERR`, turned into a reconnect like any other) and then lets the client work.

The link state is what probes read: `Lifeline.health(now, grace_s)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import types
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import nats.errors
from nats.aio.client import Client

log = logging.getLogger(__name__)

# Lower-cased fragments of the server's -ERR texts that end a connection over who it is (nats-server
# client.go: authViolation, authExpired, accountAuthExpired, "User Authentication Revoked").
AUTH_ERRORS = ("authorization violation", "authentication expired", "authentication revoked")
REFUSED_LOG_EVERY_S = 600.0
FIRST_ATTEMPTS_WAIT_S = 2.0  # nats-py's reconnect_time_wait, put back once connected (it bounds a wait in close)


class LinkState(StrEnum):
    CONNECTING = "Connecting"
    CONNECTED = "Connected"
    RECONNECTING = "Reconnecting"  # the server is gone or the network paused
    REFUSED = "Refused"  # the server answers but refuses who we are
    CLOSED = "Closed"  # closed for good: nothing will reconnect it


@dataclass(frozen=True)
class Backoff:
    """Delay before reconnect attempt `failures + 1`: none for the first (an expired grant is renewed at
    once), then `first_s` doubling to `max_s`, or to `refused_max_s` while the server refuses us (the auth
    callout is a shared service: a fleet of refused agents must not hammer it). Jitter spreads a fleet's
    attempts so a restarted server is not met by all of them at once."""

    first_s: float = 0.5
    max_s: float = 30.0
    refused_max_s: float = 60.0
    jitter: float = 0.2

    def delay(self, failures: int, refused: bool, rand: float) -> float:
        if failures <= 0:
            return 0.0
        ceiling = self.refused_max_s if refused else self.max_s
        base = min(self.first_s * 2.0 ** min(failures - 1, 30), ceiling)
        return round(base * (1.0 - self.jitter + 2 * self.jitter * rand), 3)


@dataclass(frozen=True)
class LinkHealth:
    """What a probe answers: ready (serving), live (worth keeping the process), and why not."""

    ready: bool
    live: bool
    reason: str


@dataclass
class LinkStats:
    reconnects: int = 0  # successful re-connections (each one a fresh grant on a callout user)
    grants_expired: int = 0  # the server ended a grant (`Authentication Expired`)
    refusals: int = 0  # connection attempts the server refused, in all
    disconnects: int = 0
    late_logins: int = 0  # logins nats-py returned before the server had answered them (finish_login)


def resume(client: Client) -> None:
    """What nats-py's connect does on the server's PONG, done late: the client is connected, a flusher writes
    what it queued meanwhile (its subscriptions, its first requests)."""
    client._status = Client.CONNECTED
    if client._flusher_task is None or client._flusher_task.done():
        client._flusher_task = asyncio.get_running_loop().create_task(client._flusher())
    if client._pending_data_size > 0 and client._flush_queue is not None and not client._flush_queue.full():
        client._flush_queue.put_nowait(asyncio.get_running_loop().create_future())


def ask_again(client: Client, answer: asyncio.Future[bool]) -> None:
    """Ask the server whether it accepted `client`'s login: `answer` is done on its PONG (a refusal is an -ERR)."""
    client._pongs.append(answer)
    if client._transport is not None:  # a PONG for the server's PING nats-py swallowed, and our PING
        client._transport.write(b"PONG\r\nPING\r\n")


async def login_answered(client: Client, timeout_s: float = 10.0) -> Client:
    """For a client connected without a lifeline (a one-shot tool, a test counting the server's denials): if
    nats-py returned it before the server answered its login (see the module docstring), wait for the answer and
    let the client work. Raises the server's refusal (nats-py's AuthorizationError) if it refused the login,
    nats-py's TimeoutError if it gave no answer within `timeout_s`."""
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


def health_of(state: LinkState, since: float, reason: str, now: float, grace_s: float) -> LinkHealth:
    """Pure: a link down for longer than `grace_s` is not ready; only a closed one is not live."""
    if state is LinkState.CONNECTED:
        return LinkHealth(True, True, "connected")
    if state is LinkState.CLOSED:
        return LinkHealth(False, False, f"bus connection closed for good: {reason}")
    down_s = now - since
    why = f"bus {state.value.lower()} for {down_s:.0f}s: {reason}"
    return LinkHealth(down_s <= grace_s, True, why)


class Lifeline:
    """Keeps one nats-py client connected for good and knows how its link is.

    Use: `nats.connect(url, **lifeline.options(error_cb=...))` (or the same options to FastStream's
    NatsBroker), then `lifeline.attach(client)` once connected.
    """

    def __init__(
        self,
        name: str,
        *,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.name = name
        self.backoff = backoff or Backoff()
        self.clock, self.rand = clock, rand
        self.state = LinkState.CONNECTING
        self.since = clock()
        self.reason = "not connected yet"
        self.failures = 0  # reconnect attempts since the link was last up
        self.refused_since: float | None = None
        self.refused_logged_at = 0.0
        self.stats = LinkStats()
        self.client: Client | None = None
        self.stopping = False
        self.generation = 0
        self.first: Client | None = None  # the client `connect` is making its first connection with

    # -- options given at connect time (public nats-py callbacks) ----------------------------------------

    def options(self, error_cb: Callable[[Exception], Awaitable[None]] | None = None) -> dict[str, Any]:
        """nats-py connect options (public callbacks) for the next connection this lifeline looks after.

        A lifeline follows one connection at a time: when its holder swaps connections (a cluster agent
        moving from its join login to its cluster login), the old one's callbacks fall silent.
        """
        self.generation += 1
        self.stopping = False  # a new connection: the last one's deliberate close is history
        generation = self.generation

        def current() -> bool:
            return generation == self.generation and not self.stopping

        async def on_error(error: Exception) -> None:
            if current():
                self.saw_error(error)
                if self.first is not None:
                    self._pace(self.first)
            if error_cb is not None:
                await error_cb(error)

        async def on_disconnected() -> None:
            if current():
                self._on_disconnected()

        async def on_reconnected() -> None:
            if current():
                self.stats.reconnects += 1
                self._up()

        async def on_closed() -> None:
            if current():
                self._on_closed()

        return {
            "error_cb": on_error,
            "disconnected_cb": on_disconnected,
            "reconnected_cb": on_reconnected,
            "closed_cb": on_closed,
            "reconnect_to_server_handler": self._pick_server,
            "max_reconnect_attempts": -1,
            "allow_reconnect": True,
        }

    async def connect(self, servers: str, **options: Any) -> Client:
        """`nats.connect(servers, **options)` with this lifeline's options, attached, and its back-off between
        first attempts too: nats-py makes a first connection again every `reconnect_time_wait` (2 s), never longer
        and all at once, so a fleet refused while the auth callout was late came back at it together, forever."""
        client = self.first = Client()
        try:
            await client.connect(servers, **(options | self.options()))
        except BaseException:
            self.first = None
            with contextlib.suppress(Exception):  # it may not have got far enough to close cleanly
                await client.close()
            raise
        self.first = None
        client.options["reconnect_time_wait"] = FIRST_ATTEMPTS_WAIT_S
        return self.attach(client)

    def _pace(self, client: Client) -> None:
        """A first attempt failed: how long nats-py waits before the next one (it reads this option each time)."""
        self.failures += 1
        refused = self.state is LinkState.REFUSED
        client.options["reconnect_time_wait"] = self.backoff.delay(self.failures, refused, self.rand())

    def attach(self, client: Client) -> Client:
        """Make `client` reconnect on auth errors instead of closing (see the module docstring)."""
        self.client = client
        original = client._process_err  # the one nats-py behaviour this module replaces
        lifeline = self

        async def process_err(self: Client, err_msg: str) -> None:
            text = err_msg.lower()
            mine = lifeline.client is self and not lifeline.stopping
            if mine and any(fragment in text for fragment in AUTH_ERRORS) and not self.is_closed:
                lifeline.server_ended(err_msg.strip().strip("'"))
                await self._process_op_err(nats.errors.AuthorizationError())
                return
            await original(err_msg)

        client._process_err = types.MethodType(process_err, client)  # type: ignore[method-assign]
        # A close or drain asked for by its holder (a join connection done with, a shutdown) is no failure.
        for name in ("close", "drain"):
            setattr(client, name, self._on_purpose(client, getattr(client, name)))
        if client.is_connecting:
            self.finish_login(client)
        else:
            self._up()
        return client

    def finish_login(self, client: Client) -> None:
        """`client` came back from nats-py's connect still CONNECTING: the line it took for the server's answer
        was the server's first PING (see the module docstring). Ask the server again and let the client work once
        it answers; a refusal reaches `process_err` and reconnects."""
        self._down(LinkState.CONNECTING, "the server has not accepted the login yet (its auth callout is late)")
        self.stats.late_logins += 1
        log.debug("%s: the server has not answered the login yet; waiting for it", self.name)
        accepted: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        generation = self.generation

        def answered(future: asyncio.Future[bool]) -> None:
            if future.cancelled() or self.client is not client or self.generation != generation:
                return
            if client.is_connecting:  # not refused, closed or reconnecting meanwhile
                resume(client)
                log.debug("%s: the server accepted the login", self.name)
                self._up()

        accepted.add_done_callback(answered)
        ask_again(client, accepted)

    def _on_purpose(self, client: Client, method: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        generation = self.generation

        async def wrapped() -> None:
            if self.client is client and self.generation == generation:
                self.stop()
            await method()

        return wrapped

    def stop(self) -> None:
        """We are closing the client on purpose: its close is not a failure."""
        self.stopping = True

    # -- what happened ------------------------------------------------------------------------------------

    def server_ended(self, text: str) -> None:
        """The server ended the connection over who we are; a reconnect (with a fresh grant) follows."""
        if "expired" in text.lower():
            self.stats.grants_expired += 1
            log.info("%s: the server ended our bus grant (%s); re-authenticating", self.name, text)
        else:
            log.warning("%s: the server ended our connection (%s); reconnecting", self.name, text)
        self._down(LinkState.RECONNECTING, text)

    def saw_error(self, error: Exception) -> None:
        text = str(error) or type(error).__name__
        if self.state is LinkState.CONNECTED:
            return  # asynchronous errors on a live link (a denied publish) are not about the link
        if AUTH_ERRORS[0] in text.lower():
            self.refused(text)
        else:
            self._down(LinkState.RECONNECTING, text)

    def refused(self, text: str) -> None:
        """A connection attempt was refused: deregistered or revoked, or the auth callout did not answer."""
        now = self.clock()
        self.stats.refusals += 1
        reason = (
            f"the server refused {self.name} ({text}): its credential may be deregistered or revoked, or "
            "registration (the auth callout) did not answer; retrying with back-off"
        )
        if self.refused_since is None:
            self.refused_since = now
            self.refused_logged_at = now
            log.error("%s", reason)
        elif now - self.refused_logged_at >= REFUSED_LOG_EVERY_S:
            self.refused_logged_at = now
            log.error("%s: still refused after %d attempts over %.0fs", self.name, self.stats.refusals,
                      now - self.refused_since)  # fmt: skip
        self._down(LinkState.REFUSED, reason)

    def failed(self, error: BaseException) -> None:
        """A connect attempt (not nats-py's own reconnect) raised `error`: refused, or unreachable."""
        text = str(error) or type(error).__name__
        if AUTH_ERRORS[0] in text.lower():
            self.refused(text)
        else:
            self.unreachable(text)

    def unreachable(self, text: str) -> None:
        """A connection attempt failed for another reason (no server, timeout, TLS)."""
        self._down(LinkState.RECONNECTING, text)

    def _down(self, state: LinkState, reason: str) -> None:
        """The link is down (since now, when it was up): `state` and `reason` say how and why."""
        if self.state is LinkState.CONNECTED:
            self.since = self.clock()
        self.state, self.reason = state, reason

    def _up(self) -> None:
        if self.state is not LinkState.CONNECTED and self.refused_since is not None:
            log.info("%s: the server accepts us again after %.0fs", self.name, self.clock() - self.refused_since)
        self.state, self.since, self.reason = LinkState.CONNECTED, self.clock(), "connected"
        self.failures, self.refused_since = 0, None

    def _on_disconnected(self) -> None:
        self.stats.disconnects += 1
        if self.state is LinkState.CONNECTED:
            self._down(LinkState.RECONNECTING, "disconnected")

    def _on_closed(self) -> None:
        error = self.client.last_error if self.client is not None else None
        self.state, self.since = LinkState.CLOSED, self.clock()
        self.reason = f"{type(error).__name__}: {error}" if error else "closed"
        log.error("%s: the bus connection is closed for good (%s); restart the process", self.name, self.reason)

    def _pick_server(self, servers: list[Any], _info: dict[str, Any]) -> tuple[Any, float]:
        """nats-py's reconnect hook: the server to try next and how long to wait first (our back-off)."""
        delay = self.backoff.delay(self.failures, self.state is LinkState.REFUSED, self.rand())
        self.failures += 1
        return servers[0], delay

    # -- what probes read -----------------------------------------------------------------------------------

    def health(self, grace_s: float, now: float | None = None) -> LinkHealth:
        return health_of(self.state, self.since, self.reason, self.clock() if now is None else now, grace_s)
