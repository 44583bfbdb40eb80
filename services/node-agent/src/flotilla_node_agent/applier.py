"""The cluster agent's workload applier: takes `ApplyManifests` from its work queue and makes the cluster match.

One durable pull consumer per cluster on `fleet.v1.agent.<cluster>._cluster.apply`, one message in flight.
For each command: resolve every manifest's scope with the backend (API discovery on Kubernetes), apply it
(server-side apply; fields another manager owns are left to it and named in the object's message), delete
what this subscription applied before and no longer wants (objects compared by group, kind, namespace and
name, so a new apiVersion of the same object is not pruned), remember what is applied now, and report
`AppliedStatusReported`; the report and the inventory commit together, and only then is the message
acknowledged (the runtime's pull loop settles each message: flotilla_runtime.pullloop). A command older
than the last decision obeyed for its subscription is acknowledged and skipped. A temporary API failure is
retried; a kind the server does not serve fails that object only; a command whose handling raises is
retried with back-off and dead-lettered at its max deliveries.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from flotilla_contracts import catalogue, subjects
from flotilla_contracts.errors import ErrorCode
from flotilla_contracts.ids import CLUSTER_AGENT_NODE
from flotilla_contracts.streams import FLEET_AGENT, agent_consumer
from flotilla_contracts.subjects import Service
from flotilla_contracts.v1.scheduler import AppliedState
from flotilla_contracts.v1.scheduler_events import (
    AppliedResource,
    AppliedStatusReported,
    ApplyManifests,
    ApplyResult,
)
from flotilla_node_agent.apply_backends import ApplyBackend, ApplyFailed
from flotilla_node_agent.restmap import ObjectRef
from flotilla_runtime import codec, telemetry
from flotilla_runtime.agent_inbox import AgentInbox
from flotilla_runtime.errors import RequestError
from flotilla_runtime.logs import BoundLogger
from flotilla_runtime.pullloop import ACK, DeadLetters, LoopStats, Outcome, PullLoop, one_at_a_time
from flotilla_runtime.store import Store, Tx

APPLY_VERB = "apply"
_refs = msgspec.json.Decoder(list[tuple[str, str, str, str]])


class RetryLater(Exception):
    """The API server could not be reached or asked us to back off; nothing is reported yet."""


@dataclass
class ApplierStats:
    applied: int = 0
    skipped: int = 0
    loop: LoopStats = field(default_factory=LoopStats)

    @property
    def retried(self) -> int:
        return self.loop.retried + self.loop.waited

    @property
    def dead_lettered(self) -> int:
        return self.loop.dead_lettered


def _resource(ref: ObjectRef, result: ApplyResult, message: str = "") -> AppliedResource:
    return AppliedResource(
        api_version=ref.api_version,
        kind=ref.kind,
        namespace=ref.namespace,
        name=ref.name,
        result=result,
        message=message[:4096],
    )


def _as_written(manifest: dict[str, Any]) -> ObjectRef:
    """A reference for reporting an object that could not be resolved: its namespace as the manifest gives it."""
    meta = manifest.get("metadata") or {}
    return ObjectRef.of(manifest, namespaced=bool(isinstance(meta, dict) and meta.get("namespace")))


def _manifest_of(ref: ObjectRef) -> dict[str, Any]:
    metadata = {"name": ref.name, **({"namespace": ref.namespace} if ref.namespace else {})}
    return {"apiVersion": ref.api_version, "kind": ref.kind, "metadata": metadata}


class ManifestApplier:
    """Implements `cluster_agent.WorkloadApplier` over an `ApplyBackend`."""

    def __init__(
        self,
        js: JetStreamContext | None,
        store: Store,
        backend: ApplyBackend,
        log: BoundLogger,
        *,
        instance_id: str = "",
        ack_wait_s: float = 60.0,
        fetch_timeout_s: float = 5.0,
        retry_s: float = 2.0,
        max_message_bytes: int = 1024 * 1024,
        max_deliveries: int = 10,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        gate: asyncio.Semaphore | None = None,
    ) -> None:
        self.js, self.store, self.backend, self.log = js, store, backend, log
        self.gate = gate  # shared by the cluster agents of one process: consumer creations in flight (PullLoop)
        self.instance_id = instance_id
        self.ack_wait_s, self.fetch_timeout_s, self.retry_s = ack_wait_s, fetch_timeout_s, retry_s
        self.clock = clock
        self.max_message_bytes = max_message_bytes
        self.max_deliveries = max_deliveries
        self.stats = ApplierStats()
        self.cluster_id = ""

    # --- applying (no NATS needed) -------------------------------------------------------------------------

    async def _previous(self, cluster_id: str, subscription: str) -> tuple[int, int, list[ObjectRef]] | None:
        row = await self.store.fetchone(
            "SELECT generation, decision, objects FROM applied_subscriptions WHERE cluster_id = ? AND subscription = ?",
            (cluster_id, subscription),
        )
        if row is None:
            return None
        return int(row[0]), int(row[1]), [ObjectRef(*ref) for ref in _refs.decode(row[2])]

    async def apply(self, command: ApplyManifests) -> AppliedStatusReported | None:
        """Make the cluster match the command, commit the inventory with the report; None when stale.

        Raises RetryLater when the API server is unavailable (nothing is committed)."""
        started = time.monotonic()
        previous = await self._previous(command.cluster_id, command.subscription)
        if previous is not None and (command.generation, command.decision) < previous[:2]:
            self.stats.skipped += 1
            return None
        resources: list[AppliedResource] = []
        failures: list[str] = []
        notes: list[str] = []
        desired: list[ObjectRef] = []
        unresolved: set[tuple[str, str, str]] = set()  # (group, kind, name) of manifests with no mapping
        for manifest in command.manifests if command.placed else []:
            try:
                ref = await self.backend.resolve(manifest)
                outcome = await self.backend.apply(ref, manifest, command.field_manager)
            except ApplyFailed as exc:
                if exc.temporary:
                    raise RetryLater(str(exc)) from None
                ref = _as_written(manifest)
                unresolved.add((ref.group, ref.kind, ref.name))
                resources.append(_resource(ref, ApplyResult.FAILED, str(exc)))
                failures.append(str(exc))
                continue
            desired.append(ref)
            resources.append(_resource(ref, outcome.result, outcome.message))
            if outcome.message:
                notes.append(f"{ref}: {outcome.message}")
        wanted = {ref.identity for ref in desired}
        keep: list[ObjectRef] = list(desired)
        for ref in sorted(set(await self._rescoped(previous[2] if previous else []))):
            if ref.identity in wanted:
                continue
            if (ref.group, ref.kind, ref.name) in unresolved:
                keep.append(ref)  # still wanted, only not applied this time: never prune it
                continue
            try:
                outcome = await self.backend.delete(ref)
            except ApplyFailed as exc:
                if exc.temporary:
                    raise RetryLater(str(exc)) from None
                resources.append(_resource(ref, ApplyResult.FAILED, str(exc)))
                failures.append(str(exc))
                keep.append(ref)
                continue
            resources.append(_resource(ref, outcome.result, outcome.message))
        if failures:
            state, message = AppliedState.FAILED, "; ".join(failures)
        elif command.placed:
            state, message = AppliedState.APPLIED, "; ".join([f"{len(desired)} object(s) applied", *notes])
        else:
            state, message = AppliedState.REMOVED, "removed from the cluster"
        report = AppliedStatusReported(
            command_id=command.command_id,
            cluster_id=command.cluster_id,
            subscription=command.subscription,
            generation=command.generation,
            state=state,
            message=message[:4096],
            resources=resources[:1000],
            duration_s=time.monotonic() - started,
            occurred_at=self.clock(),
        )
        async with self.store.transaction() as tx:
            await self._remember(tx, command, keep)
            await tx.emit(
                catalogue.subject_for(
                    AppliedStatusReported, cluster_id=command.cluster_id, subscription=command.subscription
                ),
                report,
            )
        self.stats.applied += 1
        return report

    async def _rescoped(self, refs: list[ObjectRef]) -> list[ObjectRef]:
        """Stored references with the scope the cluster gives their kind now (older inventories guessed it)."""
        rescoped = []
        for ref in refs:
            try:
                rescoped.append(await self.backend.resolve(_manifest_of(ref)))
            except ApplyFailed as exc:
                if exc.temporary:
                    raise RetryLater(str(exc)) from None
                rescoped.append(ref)  # an unknown kind: delete() says whether anything is left to delete
        return rescoped

    async def _remember(self, tx: Tx, command: ApplyManifests, objects: list[ObjectRef]) -> None:
        if not objects:
            await tx.execute(
                "DELETE FROM applied_subscriptions WHERE cluster_id = ? AND subscription = ?",
                (command.cluster_id, command.subscription),
            )
            return
        refs = [(r.api_version, r.kind, r.namespace, r.name) for r in sorted(set(objects))]
        await tx.execute(
            "INSERT OR REPLACE INTO applied_subscriptions "
            "(cluster_id, subscription, generation, decision, objects, applied_at) VALUES (?, ?, ?, ?, ?, ?)",
            (
                command.cluster_id,
                command.subscription,
                command.generation,
                command.decision,
                msgspec.json.encode(refs),
                time.time(),
            ),
        )

    # --- the work queue ------------------------------------------------------------------------------------

    def config(self, cluster_id: str) -> ConsumerConfig:
        return ConsumerConfig(
            name=agent_consumer(cluster_id, CLUSTER_AGENT_NODE),  # filter in the API subject (see commands.py)
            durable_name=agent_consumer(cluster_id, CLUSTER_AGENT_NODE),
            filter_subject=subjects.agent_commands_for(cluster_id, CLUSTER_AGENT_NODE),
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait_s,
            max_ack_pending=1,
            max_deliver=-1,
            description=f"cluster agent workloads for {cluster_id}",
        )

    async def run(self, cluster_id: str, nc: Client, js: JetStreamContext | None = None) -> None:
        """Consume this cluster's apply commands until cancelled (over `js` when the cluster has its own): create
        its consumer, read it when woken by a command over `nc`, and hold no pull request at rest."""
        self.cluster_id = cluster_id
        if js is not None:
            self.js = js
        if self.js is None:
            raise RuntimeError("the manifest applier has no JetStream connection")
        loop = PullLoop(
            stream=FLEET_AGENT.name,
            config=self.config(cluster_id),
            process=one_at_a_time(self.handle, self.log),
            dead_letters=DeadLetters(self.store, Service.NODE_AGENT.value, self.instance_id, cluster_id=cluster_id),
            log=self.log,
            max_deliveries=self.max_deliveries,
            batch=1,  # one in flight: commands for a subscription are applied in order
            fetch_timeout_s=self.fetch_timeout_s,
            pause_s=1.0,
            stats=self.stats.loop,
            gate=self.gate,
        )
        await AgentInbox(nc, self.js, loop, create=True).run()

    async def handle(self, msg: Msg) -> Outcome:
        """What to do with one message: ACK once the report and the inventory are committed."""
        expected = subjects.agent_command(self.cluster_id, CLUSTER_AGENT_NODE, APPLY_VERB)
        if msg.subject != expected:
            return Outcome.dead_letter(ErrorCode.WRONG_SCHEMA, f"{msg.subject} is not served by the cluster agent")
        try:
            command = codec.decode(
                msg.data, ApplyManifests, headers=msg.headers or {}, max_bytes=self.max_message_bytes
            )
        except RequestError as exc:
            return Outcome.dead_letter(exc.code, exc.message)
        if command.cluster_id != self.cluster_id:
            reason = f"command for cluster {command.cluster_id} arrived at {self.cluster_id}"
            return Outcome.dead_letter(ErrorCode.SUBJECT_MISMATCH, reason)
        log = self.log.bind(cluster=self.cluster_id, subscription=command.subscription)
        try:
            with telemetry.consumer_span("node-agent apply manifests", msg.headers, msg.subject):
                report = await self.apply(command)  # the report it publishes joins the scheduler's trace
        except RetryLater as exc:
            log.warning("cannot apply now (%s); retrying in %.1fs", exc, self.retry_s)
            return Outcome.wait(self.retry_s, f"cannot apply now ({exc})")
        if report is None:
            log.info("skipped a stale apply (generation %d, decision %d)", command.generation, command.decision)
        else:
            log.info("subscription %s: %s", command.subscription, report.state.value, extra={"detail": report.message})
        return ACK
