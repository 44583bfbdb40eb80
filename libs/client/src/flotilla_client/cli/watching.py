"""Watches driven by events (`--watch`): follow the subjects whose events change what is shown (ordered ephemeral
consumers, as `flotilla events` reads), look again once per burst of them, and now and then without one (a missed
event, a timer such as a soak)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import click

from flotilla_client.cli.common import CliContext, echo, run
from flotilla_client.cli.output import Listing, render_list
from flotilla_client.errors import ClientError
from flotilla_contracts.errors import ErrorCode

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg

    from flotilla_contracts.subjects import Entity

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger(__name__)

FALLBACK_S = 15.0  # a rollout watch looks again after this long without an event (a missed event, a soak timer)
QUIET_S = 0.2  # a burst of events ends after this long without one...
BURST_MAX_S = 2.0  # ...or this long after it began: a steady stream still redraws every 2 s
ALIVE_CHECK_S = 1.0  # how often a waiting watch checks that its connection still stands (a local check, no I/O)


class Bursts:
    """Events as they arrive on a subscription, handed out a burst at a time (one look per burst)."""

    def __init__(self, quiet_s: float = QUIET_S, burst_max_s: float = BURST_MAX_S) -> None:
        self.quiet_s, self.burst_max_s = quiet_s, burst_max_s
        self.pending = 0
        self._arrived = asyncio.Event()

    async def on_message(self, _msg: Msg) -> None:
        self.pending += 1
        self._arrived.set()

    async def next(self, fallback_s: float | None, alive: Callable[[], bool] = lambda: True) -> int:
        """Wait for the next burst and return how many events it held; 0 when `fallback_s` passed without one.
        ClientError (unavailable) once `alive()` says the connection is gone: no event can come any more."""
        loop = asyncio.get_running_loop()
        until = None if fallback_s is None else loop.time() + fallback_s
        while not self._arrived.is_set():
            if not alive():
                raise ClientError(
                    ErrorCode.UNAVAILABLE,
                    "the connection to NATS closed, so no event can reach this watch; run it again",
                )
            left = ALIVE_CHECK_S if until is None else min(ALIVE_CHECK_S, until - loop.time())
            if left <= 0:
                return 0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), left)
        ends = loop.time() + self.burst_max_s
        while (left := ends - loop.time()) > 0:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), min(self.quiet_s, left))
            except TimeoutError:
                break
        self._arrived.clear()
        count, self.pending = self.pending, 0
        return count


async def follow(
    nc: Client, subjects: Sequence[str], look: Callable[[], Awaitable[bool]], fallback_s: float | None
) -> None:
    """Call `look` now and after every burst of events on `subjects` (or `fallback_s` without one) until it
    returns True. Subscribed before the first look, so nothing that happens after it is missed."""
    import nats.errors

    from flotilla_client.events import subscribe_new

    bursts = Bursts()
    subscriptions = [sub for subject in subjects for sub in await subscribe_new(nc, subject, bursts.on_message)]
    try:
        while not await look():
            events = await bursts.next(fallback_s, alive=lambda: nc.is_connected)
            log.debug("looking again after %d events", events)
    finally:
        for subscription in subscriptions:
            with contextlib.suppress(nats.errors.Error):
                await subscription.unsubscribe()


def entity_subjects(entities: Sequence[Entity], *ids: str) -> list[str]:
    """The event subjects of these entities, of one id (`rollout.<id>.>`) or of all (`rollout.>`)."""
    from flotilla_contracts.ids import check_token
    from flotilla_contracts.subjects import EVT_PREFIX

    within = "".join(f".{check_token('id', value)}" for value in ids)
    return [f"{EVT_PREFIX}.{entity.value}{within}.>" for entity in entities]


def watch_list(
    obj: CliContext, subjects: Sequence[str], fetch: Callable[[], Sequence[Any]], output: str, listing: Listing
) -> None:
    """Print the list now, and again whenever a burst of events on `subjects` changed it (like kubectl get -w),
    until Ctrl-C. The listing's own requests run in a thread: each is a command of its own (`call`)."""
    from flotilla_client.client import FlotillaClient

    shown: list[str] = []

    async def look() -> bool:
        items = await asyncio.to_thread(fetch)
        text = render_list(items, output, listing) if items or output in ("json", "yaml") else ""
        if shown and text == shown[-1]:
            return False
        if shown:
            echo()
        if text:
            echo(text)
        else:
            echo(f"No {listing.plural} found.", err=True)
        shown.append(text)
        return False

    async def go() -> None:
        async with FlotillaClient(obj.server_url()) as client:
            await follow(client.nc, subjects, look, fallback_s=None)

    with contextlib.suppress(KeyboardInterrupt):
        run(go)


def watch_option(command: F) -> F:
    """`-w/--watch` on a list: print it, then again whenever an event changes it, until Ctrl-C."""
    return click.option(
        "-w",
        "--watch",
        is_flag=True,
        help="After printing, print the list again whenever an event changes it (until Ctrl-C).",
    )(command)
