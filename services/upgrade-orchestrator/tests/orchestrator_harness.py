"""Test harness: the engine on a real SQLite file driven synchronously, and a simulated fleet of agents.

`Sim` runs engine works the way `Store.run` does (one transaction each, outbox included), "publishes" the
outbox, and lets fake agents execute NodeStepCommands against simulated nodes while checking the safety
invariants on every command: I1 (disruption budget), I2 (control plane first), I3 (skew), I4 (each
command id executed once, node states forward only), I6 (stale epochs refused), I9 (uncordon only ours).
Tests see the rollout as a user does: `Sim.status` and `Sim.rollouts` (the status and list replies) and
`Sim.command` (a later command's reply), each decoded off the wire as the CLI gets it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from rollout_invariants import kubelet_skew

from flotilla_contracts import catalogue
from flotilla_contracts.v1 import upgrade_status as st
from flotilla_contracts.v1.agent import (
    NodeFacts,
    NodeStepCommand,
    NodeStepReported,
    RefusalReason,
    StepKind,
    StepOutcome,
    step_report,
)
from flotilla_contracts.v1.common import NodeRole
from flotilla_contracts.v1.heartbeat import ClusterHealth, ClusterHealthChanged, NodeHealth, NodeHealthChanged
from flotilla_contracts.v1.registration import ClusterIdentity, ClusterInfo, ClusterState
from flotilla_contracts.v1.upgrade import RolloutSpec, StartRolloutRequest
from flotilla_contracts.v1.upgrade_status import Direction, NodeStepState
from flotilla_kube.versions import parse_version
from flotilla_runtime.migrations import RUNTIME_MIGRATIONS, load_migrations
from flotilla_runtime.store import SyncTx
from flotilla_runtime.trust import RefusalLedger
from flotilla_upgrade_orchestrator import control, queries, reactions, recovery, reports
from flotilla_upgrade_orchestrator.engine import Engine
from flotilla_upgrade_orchestrator.model import ORDER
from flotilla_upgrade_orchestrator.plan import Estimates
from flotilla_upgrade_orchestrator.releases import Releases
from flotilla_upgrade_orchestrator.spec import check_spec

T = TypeVar("T")
T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def cluster_info(cluster_id: str, labels: dict[str, str] | None = None, version: str = "v1.29.6") -> ClusterInfo:
    return ClusterInfo(
        cluster_id=cluster_id,
        identity=ClusterIdentity(
            uid=f"uid-{cluster_id}", name=cluster_id, labels=labels or {}, kubernetes_version=version
        ),
        state=ClusterState.APPROVED,
        labels=labels or {},
        joined_at=T0,
        updated_at=T0,
    )


def cluster_in(status: st.RolloutStatusReply, cluster_id: str) -> st.ClusterStatus:
    """The cluster's entry in a status reply."""
    return next(c for c in status.clusters if c.cluster_id == cluster_id)


def node_in(cluster: st.ClusterStatus, node_id: str) -> st.NodeStatus:
    """The node's entry in a cluster's status (a status asked with its nodes)."""
    return next(n for n in cluster.nodes if n.node_id == node_id)


def facts(node_id: str, role: NodeRole, version: str, unschedulable: bool = False) -> NodeFacts:
    return NodeFacts(
        node_id=node_id, node_name=node_id, role=role, kubelet_version=version, unschedulable=unschedulable
    )


@dataclass
class SimNode:
    cluster_id: str
    node_id: str
    role: NodeRole
    version: str
    unschedulable: bool = False
    cordoned_by: str = ""
    ready: bool = True
    fail_steps: set[str] = field(default_factory=set)  # steps that fail ("drain", "upgrade", ...)


class InvariantBroken(AssertionError):
    pass


@dataclass
class Sim:
    """A fleet of simulated nodes with fake agents, and the engine on a SQLite file."""

    path: Path
    max_unavailable: dict[str, int] = field(default_factory=dict)
    now: datetime = T0
    nodes: dict[tuple[str, str], SimNode] = field(default_factory=dict)
    queue: list[NodeStepCommand] = field(default_factory=list)  # published, not yet executed
    events: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)  # (subject, schema, body)
    executed: dict[str, NodeStepReported] = field(default_factory=dict)  # agent journal: command id -> outcome
    issued_ids: list[str] = field(default_factory=list)
    issued: list[NodeStepCommand] = field(default_factory=list)  # every command published, in order
    highest_epoch: dict[tuple[str, str, str], int] = field(default_factory=dict)
    epoch: int = 1
    lease_held: bool = True
    effects: dict[tuple[str, str, str, int, str], int] = field(default_factory=dict)
    ledger: RefusalLedger = field(default_factory=lambda: RefusalLedger("upgrade-orchestrator"))

    def __post_init__(self) -> None:
        self.conn = sqlite3.connect(self.path, isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=OFF")
        for migration in [*RUNTIME_MIGRATIONS, *load_migrations("flotilla_upgrade_orchestrator", "upgrade")]:
            for statement in [s.strip() for s in migration.sql.split(";") if s.strip()]:
                self.conn.execute(statement)
        self.engine = self.new_engine()

    def new_engine(self) -> Engine:
        return Engine(epoch_of=lambda _rid: self.epoch if self.lease_held else None)

    def crash(self) -> None:
        """The process dies: memory is gone; what was committed stays (and the outbox was published)."""
        self.engine = self.new_engine()

    # --- works ------------------------------------------------------------------------------------------

    def work(self, fn: Callable[[SyncTx], T]) -> T:
        self.conn.execute("BEGIN IMMEDIATE")
        tx = SyncTx(self.conn, {})
        try:
            result = self.engine.transact(fn)(tx)
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")
        self.publish()
        return result

    def publish(self) -> None:
        rows = self.conn.execute("SELECT seq, subject, headers, payload FROM outbox ORDER BY seq").fetchall()
        for row in rows:
            schema = msgspec.json.decode(row["headers"])["Flotilla-Schema"]
            if schema == "agent.NodeStepCommand/v1":
                command = msgspec.json.decode(row["payload"], type=NodeStepCommand)
                if command.command_id in self.issued_ids:
                    raise InvariantBroken(f"I4: command {command.command_id} issued twice")
                if command.step is StepKind.CORDON:
                    self._check_budget(command)
                self.issued_ids.append(command.command_id)
                self.issued.append(command)
                self.queue.append(command)
            else:
                self.events.append((row["subject"], schema, msgspec.json.decode(row["payload"])))
        self.conn.execute("DELETE FROM outbox")

    # --- fleet ------------------------------------------------------------------------------------------

    def add_cluster(
        self,
        cluster_id: str,
        cps: int = 1,
        workers: int = 3,
        version: str = "v1.29.6",
        labels: dict[str, str] | None = None,
        worker_version: str | None = None,
    ) -> None:
        infos = []
        for i in range(cps + workers):
            role = NodeRole.CONTROL_PLANE if i < cps else NodeRole.WORKER
            node_id = f"{cluster_id}-{'cp' if i < cps else 'w'}{i}"
            v = version if role is NodeRole.CONTROL_PLANE else (worker_version or version)
            self.nodes[(cluster_id, node_id)] = SimNode(cluster_id, node_id, role, v)
            infos.append(facts(node_id, role, v))

        def fold(tx: SyncTx) -> None:
            reactions.on_cluster_info(self.engine, cluster_info(cluster_id, labels, version))
            for f in infos:
                reactions.on_node_facts(self.engine, tx, cluster_id, f, self.now)

        self.work(fold)

    def node_health(self, cluster_id: str, node_id: str, to: NodeHealth) -> None:
        self.nodes[(cluster_id, node_id)].ready = to is NodeHealth.READY
        event = NodeHealthChanged(
            cluster_id=cluster_id, node_id=node_id, node_name=node_id, to=to, reason="test", occurred_at=self.now
        )
        self.work(lambda tx: reactions.on_node_health(self.engine, tx, event, self.now))

    def cluster_health(self, cluster_id: str, to: ClusterHealth) -> None:
        event = ClusterHealthChanged(cluster_id=cluster_id, to=to, reason="test", occurred_at=self.now)
        self.work(lambda tx: reactions.on_cluster_health(self.engine, tx, event, self.now))

    # --- commands ---------------------------------------------------------------------------------------

    def start(self, spec: RolloutSpec, request_id: str = "req-1") -> str:
        checked = check_spec(spec, Releases())
        for cluster_id, _ in self.nodes:
            self.max_unavailable[cluster_id] = spec.max_unavailable
        request = StartRolloutRequest(request_id=request_id, spec=spec)
        reply = self.work(lambda tx: control.start(self.engine, tx, request, checked, Estimates(), self.now))
        return reply.rollout_id

    def tick(self, seconds: float = 0.0) -> None:
        self.now += timedelta(seconds=seconds)
        self.work(lambda tx: reactions.tick(self.engine, tx, self.now))

    # --- what a user sees: the replies, as the CLI decodes them -------------------------------------------

    def status(self, rollout_id: str) -> st.RolloutStatusReply:
        """`flotilla upgrade status --nodes`: the status query's reply (clusters with their nodes, one page)."""
        request = st.RolloutStatusRequest(rollout_id=rollout_id, include_nodes=True, limit=1000)
        reply = _wire(self.work(lambda tx: queries.status(self.engine, request)), st.RolloutStatusReply)
        assert not reply.next_cursor, "more clusters than one status page: page through them"
        return reply

    def rollouts(self) -> list[st.RolloutSummary]:
        """`flotilla upgrade list`: the rollouts the list query shows, newest first."""
        request = st.ListRolloutsRequest(limit=1000)
        return _wire(self.work(lambda tx: queries.list_rollouts(self.engine, request)), st.ListRolloutsReply).rollouts

    def command(self, verb: str, request: Any) -> st.RolloutReply:
        """A later command on a rollout (pause, resume, abort, approve, retry, skip, rollback) and its reply."""
        fn = getattr(recovery if verb in ("retry", "skip", "rollback") else control, verb)
        return _wire(self.work(lambda tx: fn(self.engine, tx, request, self.now)), st.RolloutReply)

    # --- the fake agents --------------------------------------------------------------------------------

    def _check_budget(self, command: NodeStepCommand) -> None:
        """I1 when a cordon is issued: nodes down now (ours, others', NotReady) plus cordons on the way."""
        down = {
            node_id
            for (c, node_id), n in self.nodes.items()
            if c == command.cluster_id and (n.unschedulable or n.cordoned_by or not n.ready)
        }
        down |= {c.node_id for c in self.queue if c.cluster_id == command.cluster_id and c.step is StepKind.CORDON}
        down.add(command.node_id)
        limit = self.max_unavailable.get(command.cluster_id, 1)
        if len(down) > limit:
            raise InvariantBroken(f"I1: cordon of {command.node_id} makes {len(down)} nodes unavailable (max {limit})")

    def unavailable(self, cluster_id: str) -> int:
        return sum(
            1
            for (c, _), n in self.nodes.items()
            if c == cluster_id and (n.unschedulable or n.cordoned_by or not n.ready)
        )

    def execute(self, command: NodeStepCommand) -> NodeStepReported:
        """Run one command on its simulated node, checking the invariants; return the agent's report."""
        key = (command.rollout_id, command.cluster_id, command.node_id)
        if command.command_id in self.executed:
            return msgspec.structs.replace(self.executed[command.command_id], replayed=True)
        highest = self.highest_epoch.get(key)
        if highest is not None and command.epoch < highest:
            return self._report(command, StepOutcome.REFUSED, refusal=RefusalReason.STALE_EPOCH)
        self.highest_epoch[key] = command.epoch
        node = self.nodes[(command.cluster_id, command.node_id)]
        effect_key = (
            command.rollout_id,
            command.node_id,
            command.step.value,
            command.attempt,
            "rollback" if command.previous and command.step is StepKind.ROLLBACK else "x",
        )
        self.effects[effect_key] = self.effects.get(effect_key, 0) + 1
        if self.effects[effect_key] > 1:
            raise InvariantBroken(f"I4: {effect_key} took effect twice")
        extra: dict[str, Any] = {}
        if command.step.value in node.fail_steps:
            report = self._report(command, StepOutcome.FAILED, reason="InjectedFailure", message="injected")
            self.executed[command.command_id] = report
            return report
        if command.step is StepKind.CORDON:
            was = node.unschedulable or bool(node.cordoned_by)
            if not was:
                node.cordoned_by = command.rollout_id
            extra["was_cordoned"] = was
        elif command.step is StepKind.UPGRADE:
            self._check_upgrade(node, command.target.kubernetes_version)
            node.version = command.target.kubernetes_version
        elif command.step is StepKind.ROLLBACK:
            assert command.previous is not None
            node.version = command.previous.kubernetes_version
            extra["kubelet_version"] = node.version
        elif command.step is StepKind.VERIFY:
            extra["kubelet_version"] = node.version
        elif command.step is StepKind.UNCORDON:
            if node.cordoned_by != command.rollout_id:
                raise InvariantBroken(
                    f"I9: uncordon of {node.node_id} that rollout {command.rollout_id} did not cordon"
                )
            node.cordoned_by = ""
        report = self._report(command, StepOutcome.SUCCEEDED, **extra)
        self.executed[command.command_id] = report
        return report

    def _check_upgrade(self, node: SimNode, target: str) -> None:
        peers = [n for (c, _), n in self.nodes.items() if c == node.cluster_id]
        apis = [parse_version(n.version) for n in peers if n.role is NodeRole.CONTROL_PLANE]
        new = parse_version(target)
        if node.role is NodeRole.WORKER:
            if any(api < new and api.minor_version != new.minor_version for api in apis):
                raise InvariantBroken(f"I2: worker {node.node_id} moves to {target} before every API server")
            if any(new.minor > api.minor for api in apis):
                raise InvariantBroken(f"I3: kubelet {target} newer than an API server")
        else:
            moving = [n for n in peers if n.role is NodeRole.CONTROL_PLANE and n.cordoned_by and n is not node]
            if moving:
                raise InvariantBroken(f"I2: control-plane nodes upgraded together in {node.cluster_id}")
            if new.minor - parse_version(node.version).minor > 1:
                raise InvariantBroken(f"I3: control plane {node.version} -> {target} skips a minor")
        # The kubelets left behind, against the API servers as they will be (the oracle's skew rule: three
        # minors, two below v1.25).
        api_after = target if node.role is NodeRole.CONTROL_PLANE else str(min(apis))
        for peer in peers:
            if peer.role is NodeRole.WORKER and peer is not node:
                why = kubelet_skew(peer.version, api_after)
                if why is not None:
                    raise InvariantBroken(f"I3: {why}")

    def _report(self, command: NodeStepCommand, outcome: StepOutcome, **extra: Any) -> NodeStepReported:
        return step_report(command, outcome, self.now, **extra)

    def deliver(self, report: NodeStepReported, subject: str = "") -> None:
        """A report as the intake hands it over, on its own node's subject unless `subject` says otherwise."""
        on = subject or catalogue.subject_for(NodeStepReported, cluster_id=report.cluster_id, node_id=report.node_id)
        self.work(lambda tx: reports.receive_report(self.engine, self.ledger, tx, on, report, self.now))

    def step_agents(self, limit: int | None = None) -> int:
        """Execute queued commands in order and deliver their reports; returns how many ran."""
        ran = 0
        while self.queue and (limit is None or ran < limit):
            command = self.queue.pop(0)
            self.deliver(self._report(command, StepOutcome.ACCEPTED))
            self.deliver(self.execute(command))
            ran += 1
        return ran

    def run(self, max_rounds: int = 10_000, tick_s: float = 1.0) -> None:
        """Agents and ticks until nothing is queued and a tick issues nothing new."""
        for _ in range(max_rounds):
            if not self.step_agents():
                self.tick(tick_s)
                if not self.queue:
                    return
        raise AssertionError("the rollout did not settle")

    # --- checks on the event log ------------------------------------------------------------------------

    def node_events(self) -> list[dict[str, Any]]:
        return [body for _, schema, body in self.events if schema == "upgrade.NodeStepStateChanged/v1"]

    def check_forward_only(self) -> None:
        """I4: node states move forward except by an explicit retry (new attempt) or a rollback."""
        for body in self.node_events():
            before, to = body.get("from"), body["to"]
            if before is None or body.get("reason") == "Retry" or body.get("direction") == Direction.ROLLBACK:
                continue
            if to == NodeStepState.FAILED or before == NodeStepState.FAILED:
                continue
            if ORDER[NodeStepState(to)] <= ORDER[NodeStepState(before)]:
                raise InvariantBroken(f"I4: {body['node_id']} moved {before} -> {to}")

    def schemas(self) -> list[str]:
        return [schema for _, schema, _ in self.events]


def _wire(reply: Any, reply_type: type[T]) -> T:
    """A reply as it arrives: encoded, then decoded as its contract type (nothing but what the wire carries)."""
    return msgspec.json.decode(msgspec.json.encode(reply), type=reply_type)
