"""The orchestrator's commands through FastStream's TestNatsBroker (handler tests), with the fleet set up
directly in the engine's read model; `Sim` (orchestrator_harness.py) drives the engine without a broker."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
from orchestrator_harness import T0, cluster_info, facts

from flotilla_contracts.envelope import Reply
from flotilla_contracts.subjects import Service, command
from flotilla_contracts.v1.common import NodeRole
from flotilla_runtime.store import SyncTx
from flotilla_upgrade_orchestrator import reactions

T = TypeVar("T")


@dataclass
class Commands:
    """The commands through TestNatsBroker, and the fleet set up directly in the engine's read model."""

    broker: Any
    store: Any
    orchestrator: Any

    async def fleet(
        self,
        cluster_id: str,
        cps: int = 1,
        workers: int = 2,
        version: str = "v1.29.6",
        labels: dict[str, str] | None = None,
        worker_version: str | None = None,
    ) -> None:
        engine = self.orchestrator.engine

        def fold(tx: SyncTx) -> None:
            reactions.on_cluster_info(engine, cluster_info(cluster_id, labels, version))
            for i in range(cps + workers):
                role = NodeRole.CONTROL_PLANE if i < cps else NodeRole.WORKER
                v = version if role is NodeRole.CONTROL_PLANE else (worker_version or version)
                reactions.on_node_facts(engine, tx, cluster_id, facts(f"{cluster_id}-n{i}", role, v), T0)

        await self.orchestrator.run(fold)

    async def raw(self, verb: str, body: Any) -> dict[str, Any]:
        reply = await self.broker.request(msgspec.json.encode(body), command(Service.UPGRADE_ORCHESTRATOR, verb))
        decoded: dict[str, Any] = msgspec.json.decode(reply.body)
        return decoded

    async def ok(self, verb: str, body: Any, reply_type: type[T]) -> T:
        raw = await self.raw(verb, body)
        assert raw["ok"], raw
        reply = msgspec.convert(raw, type=Reply[reply_type])  # type: ignore[valid-type]
        assert reply.data is not None
        return reply.data  # type: ignore[no-any-return]

    async def error(self, verb: str, body: Any) -> dict[str, Any]:
        raw = await self.raw(verb, body)
        assert raw["ok"] is False, raw
        error: dict[str, Any] = raw["error"]
        return error

    async def events(self) -> list[str]:
        rows = await self.store.fetchall("SELECT headers FROM outbox ORDER BY seq")
        return [msgspec.json.decode(row["headers"])["Flotilla-Schema"] for row in rows]
