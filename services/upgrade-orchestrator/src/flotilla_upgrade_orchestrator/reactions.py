"""How the engine takes in the world: agents' step reports, health transitions, inventory, and the tick.

Each keeps the orchestrator's read model of the fleet up to date (fleet.py) and hands the fact to
`decide` (through applier.run) for every rollout it concerns. A report is handed on only when it names a
command in flight, so a duplicate or a report on a settled command changes nothing (I4).
"""

from __future__ import annotations

from datetime import datetime

from flotilla_contracts.v1.agent import NodeFacts, NodeStepReported, StepOutcome
from flotilla_contracts.v1.heartbeat import ClusterHealthChanged, NodeHealthChanged
from flotilla_contracts.v1.registration import ClusterInfo
from flotilla_contracts.v1.registration_events import NodeRemoved
from flotilla_runtime.disruption import Change, describe
from flotilla_runtime.logs import get_logger
from flotilla_runtime.store import SyncTx
from flotilla_upgrade_orchestrator import applier, inventory
from flotilla_upgrade_orchestrator import fleet as fleet_model
from flotilla_upgrade_orchestrator.decide import facts
from flotilla_upgrade_orchestrator.engine import Engine
from flotilla_upgrade_orchestrator.model import Rollout

log = get_logger("flotilla.upgrade-orchestrator.reactions")


def describe_change(change: Change) -> str:
    return describe(change.began or change.ended)


def on_report(engine: Engine, tx: SyncTx, report: NodeStepReported, now: datetime) -> None:
    if report.outcome in (StepOutcome.ACCEPTED, StepOutcome.PROGRESS):
        return  # informational: the step is under way
    where = engine.inflight.get(report.command_id)
    if where is None:
        return  # a duplicate, or a report on a command already settled or superseded: nothing to do (I4)
    rollout_id, cluster_id, node_id = where
    applier.run(engine, tx, engine.rollouts[rollout_id], facts.Report(report, cluster_id, node_id), now)


def _rollouts_with(engine: Engine, cluster_id: str) -> list[Rollout]:
    return [r for r in engine.rollouts.values() if cluster_id in r.clusters and not r.final]


def on_node_health(engine: Engine, tx: SyncTx, event: NodeHealthChanged, now: datetime) -> None:
    cluster = engine.fleet.get(event.cluster_id)
    if cluster is None:
        return
    node = cluster.nodes.get(event.node_id)
    if node is not None:
        node.health = event.to
        engine.dirty_fleet.add(event.cluster_id)
    for rollout in _rollouts_with(engine, event.cluster_id):
        applier.run(engine, tx, rollout, facts.NodeHealth(event), now)


def on_cluster_health(engine: Engine, tx: SyncTx, event: ClusterHealthChanged, now: datetime) -> None:
    cluster = engine.fleet.get(event.cluster_id)
    if cluster is None:
        return
    cluster.health_since = event.occurred_at  # as the scheduler's read model keeps it: the same rule, the same verdict
    cluster.health = event.to
    cluster.api_servers_ready = event.api_servers_ready
    cluster.api_servers_total = event.api_servers_total
    engine.dirty_fleet.add(event.cluster_id)
    engine.watch(cluster)
    change = engine.disruption.judge(event.occurred_at)  # at the event's time: the same verdict on replay
    for rollout in _rollouts_with(engine, event.cluster_id):
        applier.run(engine, tx, rollout, facts.ClusterHealth(event), now)
    if change:
        # Much of the fleet went Unreachable at once, or came back: every rollout's gates freeze it with
        # FleetDisruption, or lift that freeze (progress.gates).
        engine.dirty_disruption = True
        log.bind(cluster=event.cluster_id).warning(
            "fleet disruption %s", "began" if change.began else "ended", extra={"groups": describe_change(change)}
        )
        for rollout in list(engine.rollouts.values()):
            if not rollout.final:
                applier.run(engine, tx, rollout, facts.Advance(), now)


def on_cluster_info(engine: Engine, info: ClusterInfo) -> None:
    engine.watch(fleet_model.apply_cluster_info(engine.fleet, info))  # judged at the next health change
    engine.dirty_fleet.add(info.cluster_id)


def on_node_facts(
    engine: Engine, tx: SyncTx, cluster_id: str, node_facts: NodeFacts, now: datetime, changed: list[str] | None = None
) -> None:
    """A node's inventory: kept in the read model; every rollout with its cluster decides on what moved (a
    version drift, a cluster waiting for its inventory)."""
    empty = fleet_model.FleetCluster(cluster_id=cluster_id)
    before = engine.fleet.get(cluster_id, empty).nodes.get(node_facts.node_id)
    fleet_model.apply_node(engine.fleet, cluster_id, node_facts, changed)
    engine.dirty_fleet.add(cluster_id)
    node = engine.fleet[cluster_id].nodes[node_facts.node_id]
    was = {} if before is None else dict(inventory.versions_of(before))
    moved = frozenset(c for c, version in inventory.versions_of(node) if was.get(c) != version)
    for rollout in [r for r in engine.rollouts.values() if cluster_id in r.clusters]:
        applier.run(engine, tx, rollout, facts.Inventory(cluster_id, node, moved), now)


def on_node_removed(engine: Engine, event: NodeRemoved) -> None:
    cluster = engine.fleet.get(event.cluster_id)
    if cluster is not None and cluster.nodes.pop(event.node_id, None) is not None:
        engine.dirty_fleet.add(event.cluster_id)


def tick(engine: Engine, tx: SyncTx, now: datetime) -> None:
    """Time-driven moves in every rollout: step timeouts, soak ends, windows opening, no progress."""
    for rollout in list(engine.rollouts.values()):
        applier.run(engine, tx, rollout, facts.Tick(), now)


def advance(engine: Engine, tx: SyncTx, rollout: Rollout, now: datetime) -> None:
    """Move one rollout as far as it can go now (e.g. once its lease is ours)."""
    applier.run(engine, tx, rollout, facts.Advance(), now)
