"""Finding running services through NATS service discovery (`$SRV.PING` and `$SRV.STATS`, ADR-32)."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from flotilla_contracts import subjects

_FRACTION = re.compile(r"\.(\d{6})\d+")


class EndpointRecord(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    subject: str = ""
    num_requests: int = 0
    num_errors: int = 0
    last_error: str = ""


class ServiceRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One service instance as discovery reports it."""

    name: str
    id: str
    version: str = ""
    started: datetime | None = None
    uptime_s: float | None = None
    endpoints: list[EndpointRecord] = []
    metadata: dict[str, str] = {}

    @property
    def requests(self) -> int:
        return sum(ep.num_requests for ep in self.endpoints)

    @property
    def errors(self) -> int:
        return sum(ep.num_errors for ep in self.endpoints)

    @property
    def health(self) -> str:
        return self.metadata.get("health", "")


def parse_time(value: Any) -> datetime | None:
    """RFC 3339 with any fraction (Go sends nanoseconds); None when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(_FRACTION.sub(r".\1", value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


Docs = dict[tuple[str, str], dict[str, Any]]


def merge(pings: Docs, stats: Docs) -> list[ServiceRecord]:
    """Records for every instance that answered PING, enriched by its STATS document when one came."""
    now = datetime.now(UTC)
    records = []
    for key, ping in pings.items():
        stat = stats.get(key, {})
        started = parse_time(stat.get("started"))
        endpoints = [
            EndpointRecord(
                name=str(ep.get("name", "")),
                subject=str(ep.get("subject", "")),
                num_requests=int(ep.get("num_requests") or 0),
                num_errors=int(ep.get("num_errors") or 0),
                last_error=str(ep.get("last_error") or ""),
            )
            for ep in stat.get("endpoints") or []
            if isinstance(ep, dict)
        ]
        metadata = {str(k): str(v) for k, v in {**(ping.get("metadata") or {}), **(stat.get("metadata") or {})}.items()}
        records.append(
            ServiceRecord(
                name=key[0],
                id=key[1],
                version=str(ping.get("version", "")),
                started=started,
                uptime_s=(now - started).total_seconds() if started else None,
                endpoints=endpoints,
                metadata=metadata,
            )
        )
    return sorted(records, key=lambda r: (r.name, r.id))


async def collect_services(
    nc: Client,
    *,
    timeout: float = 1.0,  # noqa: ASYNC109 - a collection window, not a cancel scope
    expect: int = 0,
    stall: float = 0.25,
) -> list[ServiceRecord]:
    """Ask every instance at once and gather replies until `expect` arrived, replies stall, or `timeout`."""
    pings: Docs = {}
    stats: Docs = {}
    arrived = asyncio.Event()

    async def on_reply(msg: Msg) -> None:
        try:
            doc = msgspec.json.decode(msg.data)
        except msgspec.DecodeError:
            return
        if not isinstance(doc, dict) or "name" not in doc or "id" not in doc:
            return
        key = (str(doc["name"]), str(doc["id"]))
        kind = str(doc.get("type", ""))
        (stats if kind.endswith("stats_response") else pings)[key] = doc
        arrived.set()

    # One reply subject per request: on an authenticated bus a service may answer each reply subject
    # it received once (allow_responses), and nats-server refuses both answers when two requests share one.
    inbox = nc.new_inbox()
    sub = await nc.subscribe(f"{inbox}.*", cb=on_reply)
    try:
        await nc.publish(subjects.SRV_PING, b"", reply=f"{inbox}.ping")
        await nc.publish(subjects.SRV_STATS, b"", reply=f"{inbox}.stats")
        await nc.flush()
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if expect and len(pings) >= expect and set(pings) <= set(stats):
                break
            wait = min(left, stall) if pings else left
            arrived.clear()
            try:
                await asyncio.wait_for(arrived.wait(), wait)
            except TimeoutError:
                if pings and not expect:
                    break
    finally:
        await sub.unsubscribe()
    return merge(pings, stats)
