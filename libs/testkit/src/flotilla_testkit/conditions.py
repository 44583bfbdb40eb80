"""One condition wait for every test: poll a check until it holds, fail naming what was awaited and the last value
the check gave. Tests wait on conditions, never on fixed sleeps: `every_s` is only the polling interval, the wait
ends as soon as the condition holds, and `timeout_s` only bounds a wait that would otherwise hang."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

T = TypeVar("T")

TIMEOUT_S = 30.0
EVERY_S = 0.05
_NOTHING = object()  # the check never returned a value (it raised one of `retrying` every time)
_SHOWN_CHARS = 2000


class ConditionNotMet(AssertionError):
    """A condition did not hold in time: names what was awaited, the timeout and the last value seen."""

    def __init__(self, what: str, timeout_s: float, last: object) -> None:
        self.what = what
        self.timeout_s = timeout_s
        self.last = last
        super().__init__(f"{what}: not true within {timeout_s:g} s; last seen: {shown(last)}")


def shown(last: object) -> str:
    """The last value seen, as a failure message shows it (an exception by type and text, long values cut)."""
    if last is _NOTHING:
        return "no value (the check raised every time)"
    if isinstance(last, BaseException):
        return f"{type(last).__name__}: {last}"
    text = repr(last)
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."


@overload
async def eventually(
    check: Callable[[], Awaitable[T]],
    what: str,
    *,
    timeout_s: float = ...,
    every_s: float = ...,
    retrying: tuple[type[Exception], ...] = ...,
    until: Callable[[T], object] | None = ...,
) -> T: ...


@overload
async def eventually(
    check: Callable[[], T],
    what: str,
    *,
    timeout_s: float = ...,
    every_s: float = ...,
    retrying: tuple[type[Exception], ...] = ...,
    until: Callable[[T], object] | None = ...,
) -> T: ...


async def eventually(
    check: Callable[[], Awaitable[T] | T],
    what: str,
    *,
    timeout_s: float = TIMEOUT_S,
    every_s: float = EVERY_S,
    retrying: tuple[type[Exception], ...] = (),
    until: Callable[[T], object] | None = None,
) -> T:
    """Call `check` until it returns something truthy (or that `until` accepts) and return that value.

    A coroutine check is awaited on the running loop; a plain check runs as-is (it must not block: wrap a blocking
    one in `asyncio.to_thread`). An exception of a type in `retrying` counts as "not yet" (a service still
    starting); any other exception fails at once. After `timeout_s`, raise `ConditionNotMet` naming `what` and the
    last value (or exception) seen: with `until`, the check returns the whole observation (a status) and a
    failure shows it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    last: object = _NOTHING
    while True:
        try:
            value = check()
            if inspect.isawaitable(value):
                value = await value
        except retrying as error:
            last = error
        else:
            if until(value) if until else value:  # type: ignore[arg-type,unused-ignore]
                return value  # type: ignore[return-value,unused-ignore]
            last = value
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise ConditionNotMet(what, timeout_s, last)
        await asyncio.sleep(min(every_s, remaining))  # sleep: the polling interval, not a wait on time


def eventually_sync(
    check: Callable[[], T],
    what: str,
    *,
    timeout_s: float = TIMEOUT_S,
    every_s: float = EVERY_S,
    retrying: tuple[type[Exception], ...] = (),
    until: Callable[[T], object] | None = None,
) -> T:
    """The same wait for code without an event loop (subprocess and CLI tests): `check` is a plain function."""
    deadline = time.monotonic() + timeout_s
    last: object = _NOTHING
    while True:
        try:
            value = check()
        except retrying as error:
            last = error
        else:
            if inspect.isawaitable(value):
                if inspect.iscoroutine(value):
                    value.close()  # never awaited: close it so it does not warn
                raise TypeError(f"{what}: eventually_sync got an awaitable; use `await eventually(...)`")
            if until(value) if until else value:
                return value
            last = value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ConditionNotMet(what, timeout_s, last)
        time.sleep(min(every_s, remaining))  # sleep: the polling interval, not a wait on time
