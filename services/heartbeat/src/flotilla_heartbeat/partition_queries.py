"""Partition scatter/gather: a health query answered by this replica for its partitions, and by peers for theirs.

Each replica serves `fleet.v1.cmd.heartbeat.partition.<p>.<verb>` (queue group per partition) for the partitions
it owns; the replica a user asks answers for its own partitions and asks one peer per partition it does not own,
leaving out a partition nobody answers within `PEER_TIMEOUT_S` (the merge in `handlers.py` says how many answered).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from flotilla_contracts import subjects
from flotilla_contracts.envelope import H_SCHEMA, Message, schema_id
from flotilla_contracts.subjects import Service
from flotilla_contracts.v1.heartbeat import ClustersHealthRequest, FleetHealthRequest, NodesHealthRequest
from flotilla_heartbeat import handlers
from flotilla_heartbeat.domain import HealthModel
from flotilla_runtime import codec
from flotilla_runtime.errors import RequestError
from flotilla_runtime.logs import BoundLogger

Q = TypeVar("Q", bound=Message)
R = TypeVar("R", bound=Message)

# One replica's answer for its own partitions: (model, request, owned partitions, partition count) -> reply.
LocalAnswer = Callable[[HealthModel, Any, list[int], int], Any]

LOCAL: dict[str, tuple[type[Message], LocalAnswer]] = {
    "health.summary": (FleetHealthRequest, handlers.summary),
    "health.clusters": (ClustersHealthRequest, handlers.clusters_page),
    "health.nodes": (NodesHealthRequest, handlers.nodes_page),
}


class PartitionQueries:
    """Serves this replica's partitions to its peers and gathers the peers' answers for a query."""

    def __init__(
        self,
        model: HealthModel,
        owned: list[int],
        count: int,
        connection: Callable[[], Client],
        log: BoundLogger,
        *,
        peer_timeout_s: float,
        max_bytes: int,
    ) -> None:
        self.model = model
        self.owned = owned
        self.count = count
        self.connection = connection
        self.log = log
        self.peer_timeout_s = peer_timeout_s
        self.max_bytes = max_bytes

    def local(self, verb: str, request: Any) -> Any:
        """This replica's answer for the partitions it owns."""
        _, answer = LOCAL[verb]
        return answer(self.model, request, self.owned, self.count)

    async def serve(self) -> list[Subscription]:
        """Answer peers for every partition owned here; the caller unsubscribes with `stop`."""
        nc = self.connection()
        return [
            await nc.subscribe(
                subjects.partition_command(Service.HEARTBEAT, p, verb),
                queue=subjects.partition_queue_group(Service.HEARTBEAT, p),
                cb=self._answer,
            )
            for p in self.owned
            for verb in LOCAL
        ]

    @staticmethod
    async def stop(serving: list[Subscription]) -> None:
        for sub in serving:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def _answer(self, msg: Msg) -> None:
        """A peer asks for one partition's answer (this replica answers for all it owns at once)."""
        verb = msg.subject.split(".partition.", 1)[1].split(".", 1)[1]
        request_type, _ = LOCAL[verb]
        try:
            request = codec.decode(msg.data, request_type, headers=msg.headers, max_bytes=self.max_bytes)
            body, headers = codec.ok_reply(self.local(verb, request))
        except RequestError as exc:
            body, headers = codec.error_reply(exc.to_body())
        with contextlib.suppress(nats.errors.Error):
            await self.connection().publish(msg.reply, body, headers=headers)

    async def gather(self, verb: str, request: Q, reply_type: type[R]) -> list[R]:
        """This replica's answer plus one per partition owned elsewhere (missing ones are left out)."""
        answers: list[R] = [self.local(verb, request)]
        others = [p for p in range(self.count) if p not in self.owned]
        if others:
            found = await asyncio.gather(*(self._ask(p, verb, request, reply_type) for p in others))
            seen = set(self.owned)
            for answer in found:
                parts = set(getattr(answer, "partitions", []))
                if answer is not None and not parts & seen:
                    answers.append(answer)
                    seen |= parts
        return answers

    async def _ask(self, partition: int, verb: str, request: Q, reply_type: type[R]) -> R | None:
        subject = subjects.partition_command(Service.HEARTBEAT, partition, verb)
        try:
            msg = await self.connection().request(
                subject,
                codec.encode(request),
                timeout=self.peer_timeout_s,
                headers={H_SCHEMA: schema_id(type(request))},
            )
            reply = codec.decode_reply(msg.data, reply_type)
        except (nats.errors.Error, TimeoutError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            self.log.warning("partition %d did not answer %s: %s", partition, verb, type(exc).__name__)
            return None
        return reply.data if reply.ok else None
