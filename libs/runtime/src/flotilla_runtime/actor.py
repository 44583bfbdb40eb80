"""Who a command came from, for the events it causes: set by the command router, read by the store's outbox."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from flotilla_contracts.envelope import H_ACTOR

_current: ContextVar[str] = ContextVar("flotilla_actor", default="")


def current() -> str:
    """The actor of the command being handled in this task, or "" outside a command."""
    return _current.get()


@contextmanager
def acting_as(actor: str) -> Iterator[None]:
    """Events committed in this block (in this task and the tasks it starts) name `actor`."""
    token = _current.set(actor)
    try:
        yield
    finally:
        _current.reset(token)


def headers(actor: str) -> dict[str, str]:
    """The event header naming `actor`; none for work no command caused."""
    return {H_ACTOR: actor} if actor else {}
