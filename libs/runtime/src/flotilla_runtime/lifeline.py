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

A login the server is still deciding on is finished, not thrown away (flotilla_runtime.logins: nats-py's
connect can return before the server answered a CONNECT that waits for the auth callout): `Lifeline.connect`
waits for the answer within the attempt, and a lifeline attached to such a client (`finish_login`) waits for it
and then lets the client work; a refusal then is an `-ERR`, turned into a reconnect like any other.

`Lifeline.connect` makes the first connection itself, one attempt at a time, with full jitter between attempts
and, when given a `LoginGate`, within the process's bound on logins in flight.

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

from flotilla_runtime.logins import LoginGate, ask_again, login_answered, resume

log = logging.getLogger(__name__)

# Lower-cased fragments of the server's -ERR texts that end a connection over who it is (nats-server
# client.go: authViolation, authExpired, accountAuthExpired, "User Authentication Revoked").
AUTH_ERRORS = ("authorization violation", "authentication expired", "authentication revoked")
REFUSED_LOG_EVERY_S = 600.0
FIRST_ATTEMPTS_WAIT_S = 2.0  # nats-py's reconnect_time_wait, put back once connected (it bounds a wait in close)
# One attempt per nats-py connect call: no reconnect, one retry of the TCP connect at once, then NoServersError.
ONE_ATTEMPT = {"allow_reconnect": False, "max_reconnect_attempts": 1, "reconnect_time_wait": 0.0}


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
        return round(self._base(failures, refused) * (1.0 - self.jitter + 2 * self.jitter * rand), 3)

    def spread(self, failures: int, refused: bool, rand: float) -> float:
        """Full jitter, for first connections: anywhere from 0 to the delay's base, so a wave of logins refused
        together (a fleet starting at once) comes back spread over the whole interval, not bunched around it."""
        return round(self._base(failures, refused) * rand, 3)

    def _base(self, failures: int, refused: bool) -> float:
        if failures <= 0:
            return 0.0
        ceiling = self.refused_max_s if refused else self.max_s
        return min(self.first_s * 2.0 ** min(failures - 1, 30), ceiling)


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
        gate: LoginGate | None = None,
    ) -> None:
        self.name = name
        self.gate = gate  # the process's bound on logins in flight, shared by its lifelines (flotilla_runtime.logins)
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
        """`nats.connect(servers, **options)` with this lifeline's options, attached, trying until it connects.

        Each attempt is one TCP connect and login, within the lifeline's `gate` (if any) until the server has
        answered the login, which may come after nats-py's connect returned (flotilla_runtime.logins); between
        attempts it waits the back-off's full-jitter delay outside the gate (longer while refused). nats-py's own
        loop would try again every 2 s, never longer and all at once: a fleet refused while the auth callout was
        late came back at it together, forever."""
        timeout_s = float(options.get("connect_timeout", 2.0))
        while True:
            if (task := asyncio.current_task()) is not None and task.cancelling():
                raise asyncio.CancelledError  # one nats-py's connect swallowed (asyncio.wait_for in 3.11): stop trying
            async with self.gate or contextlib.nullcontext():
                client = await self._attempt(servers, timeout_s, options)
            if client is not None:
                break
            self.failures += 1
            await asyncio.sleep(  # sleep: the back-off between first attempts, outside the gate
                self.backoff.spread(self.failures, self.state is LinkState.REFUSED, self.rand())
            )
        client.options.update(
            allow_reconnect=True, max_reconnect_attempts=-1, reconnect_time_wait=FIRST_ATTEMPTS_WAIT_S
        )
        return self.attach(client)

    async def _attempt(self, servers: str, timeout_s: float, options: dict[str, Any]) -> Client | None:
        """One connection attempt: the client, logged in, or None when it failed (what failed is on the link)."""
        client = Client()
        started = time.monotonic()
        try:
            await client.connect(servers, **(options | self.options() | ONE_ATTEMPT))
            if client.is_connecting:  # the server's first PING came before its answer
                self.stats.late_logins += 1
                try:
                    await login_answered(client, timeout_s)
                except (OSError, nats.errors.Error, TimeoutError) as exc:
                    self.failed(exc)
                    raise
        except (OSError, nats.errors.Error, TimeoutError):  # connect's were passed to our error_cb: the link knows
            await self._discard(client)
            return None
        finally:
            if self.gate is not None:
                self.gate.took(time.monotonic() - started)
        return client

    async def _discard(self, client: Client) -> None:
        self.stop()  # its close is not a failure to report
        with contextlib.suppress(Exception):  # it may not have got far enough to close cleanly
            await client.close()

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
