"""Answers NATS service discovery (`$SRV.PING`, `$SRV.INFO`, `$SRV.STATS`, ADR-32) for one service instance."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from flotilla_contracts import subjects
from flotilla_runtime.commands import CommandRouter

_NOT_IN_A_NAME = re.compile(r"[^A-Za-z0-9_-]")


def endpoint_name(verb: str) -> str:
    """ADR-32 allows only A-Z a-z 0-9 _ - in an endpoint's name: `tokens.create` -> `tokens_create` (its subject
    keeps the dot). The nats CLI drops an INFO reply whose names break that rule (`nats micro list`)."""
    return _NOT_IN_A_NAME.sub("_", verb)


class ServiceIdentity(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    id: str
    version: str
    description: str = ""
    metadata: dict[str, str] = {}


class Discovery:
    """Subscribes (without a queue group, so every instance answers) and replies with micro v1 documents."""

    def __init__(
        self,
        identity: ServiceIdentity,
        router: CommandRouter,
        extra_stats: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.identity = identity
        self.router = router
        self.started = datetime.now(UTC)
        self._extra_stats = extra_stats or dict
        self._subs: list[Subscription] = []

    def _base(self, kind: str) -> dict[str, Any]:
        return {
            "type": f"io.nats.micro.v1.{kind}_response",
            "name": self.identity.name,
            "id": self.identity.id,
            "version": self.identity.version,
            "metadata": dict(self.identity.metadata),
        }

    def ping(self) -> dict[str, Any]:
        return self._base("ping")

    def info(self) -> dict[str, Any]:
        doc = self._base("info")
        doc["description"] = self.identity.description
        doc["endpoints"] = [
            {
                "name": endpoint_name(ep.verb),
                "subject": ep.subject,
                "queue_group": ep.queue_group,
                "metadata": {"request": ep.request.SCHEMA, "reply": ep.reply.SCHEMA},
            }
            for ep in self.router.endpoints
        ]
        return doc

    def stats(self) -> dict[str, Any]:
        doc = self._base("stats")
        doc["started"] = self.started.isoformat().replace("+00:00", "Z")
        endpoints = []
        for ep in self.router.endpoints:
            s = ep.stats
            endpoints.append(
                {
                    "name": endpoint_name(ep.verb),
                    "subject": ep.subject,
                    "queue_group": ep.queue_group,
                    "num_requests": s.num_requests,
                    "num_errors": s.num_errors,
                    "last_error": s.last_error,
                    "processing_time": s.processing_time_ns,
                    "average_processing_time": s.processing_time_ns // s.num_requests if s.num_requests else 0,
                    "data": {"num_expired": s.num_expired} if s.num_expired else None,
                }
            )
        doc["endpoints"] = endpoints
        extra = self._extra_stats()
        if extra:
            doc["metadata"] = {**doc["metadata"], **{k: str(v) for k, v in extra.items()}}
        return doc

    async def start(self, nc: Client) -> None:
        handlers = {
            subjects.SRV_PING: self.ping,
            subjects.SRV_INFO: self.info,
            subjects.SRV_STATS: self.stats,
        }
        for subject in subjects.srv_subjects(self.identity.name, self.identity.id):
            verb = ".".join(subject.split(".")[:2])
            build = handlers[verb]

            async def reply(msg: Msg, build: Callable[[], dict[str, Any]] = build) -> None:
                if msg.reply:
                    await msg.respond(msgspec.json.encode(build()))

            self._subs.append(await nc.subscribe(subject, cb=reply))

    async def stop(self) -> None:
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except Exception:  # the connection may already be closing
                pass
        self._subs.clear()
