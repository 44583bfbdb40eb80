"""Registration test harness: commands through TestNatsBroker, a real SQLite file, an injected clock."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import msgspec

from flotilla_contracts.envelope import Message, Reply
from flotilla_contracts.subjects import Service, command
from flotilla_registration.handlers import Registration
from flotilla_runtime.store import Store

R = TypeVar("R", bound=Message)


@dataclass
class Clock:
    now: datetime = field(default_factory=lambda: datetime(2026, 11, 22, 12, 0, tzinfo=UTC))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Harness:
    broker: Any
    store: Store
    clock: Clock
    registration: Registration

    async def raw(self, verb: str, body: Message | dict[str, Any]) -> dict[str, Any]:
        reply = await self.broker.request(msgspec.json.encode(body), command(Service.REGISTRATION, verb))
        decoded: dict[str, Any] = msgspec.json.decode(reply.body)
        return decoded

    async def ok(self, verb: str, body: Message, reply_type: type[R]) -> R:
        reply = msgspec.json.decode(
            (await self.broker.request(msgspec.json.encode(body), command(Service.REGISTRATION, verb))).body,
            type=Reply[reply_type],  # type: ignore[valid-type]
        )
        assert reply.ok, reply.error
        assert reply.data is not None
        return reply.data  # type: ignore[no-any-return]

    async def error(self, verb: str, body: Message | dict[str, Any]) -> dict[str, Any]:
        reply = await self.raw(verb, body)
        assert reply["ok"] is False, reply
        error: dict[str, Any] = reply["error"]
        return error

    async def events(self) -> list[tuple[str, str]]:
        """(subject, schema) of every event committed to the outbox, in order."""
        rows = await self.store.fetchall("SELECT subject, headers FROM outbox ORDER BY seq")
        return [(row["subject"], msgspec.json.decode(row["headers"])["Flotilla-Schema"]) for row in rows]
