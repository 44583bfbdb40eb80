"""How the engine reacts to the world: agents' step reports, health transitions, inventory, and the tick.

Every reaction is idempotent: a report is applied only to the command in flight that it names, so a
duplicate, a reordered or a delayed report never moves a node backwards nor repeats a step (I4).
"""

from __future__ import annotations

from datetime import datetime

from flotilla_contracts.v1.agent import NodeFacts, NodeStepReported, RefusalReason, StepKind, StepOutcome
from flotilla_contracts.v1.heartbeat import ClusterHealth, ClusterHealthChanged, NodeHealth, NodeHealthChanged
from flotilla_contracts.v1.registration import ClusterInfo
from flotilla_contracts.v1.registration_events import NodeRemoved
from flotilla_contracts.v1.upgrade_status import ClusterRolloutState, Direction, FreezeReason, NodeStepState
from flotilla_runtime.store import SyncTx
from flotilla_upgrade_orchestrator import fleet as fleet_model
from flotilla_upgrade_orchestrator import inventory, progress, skew
from flotilla_upgrade_orchestrator.engine import Engine, log
from flotilla_upgrade_orchestrator.model import (
    ACTIVE_CLUSTER,
    STATE_AFTER,
    ClusterRec,
    FailureRec,
    NodeRec,
    Rollout,
)

_WATCHED = frozenset({*ACTIVE_CLUSTER, ClusterRolloutState.SOAKING})


# --- step reports --------------------------------------------------------------------------------------------


def on_report(engine: Engine, tx: SyncTx, report: NodeStepReported, now: datetime) -> None:
    if report.outcome in (StepOutcome.ACCEPTED, StepOutcome.PROGRESS):
        return  # informational: the step is under way
    where = engine.inflight.get(report.command_id)
    if where is None:
        return  # a duplicate, or a report on a command already settled or superseded: nothing to do (I4)
    rollout = engine.rollouts[where[0]]
    cluster = rollout.clusters[where[1]]
    node = next(n for n in cluster.nodes if n.node_id == where[2])
    if node.command_id != report.command_id or node.in_flight is not report.step:
        return
    del engine.inflight[report.command_id]
    engine.mark_active(rollout, now)
    step = report.step
    node.in_flight = None
    lost = cluster.freeze is not None and cluster.freeze.reason is FreezeReason.LOST_CONTACT
    if lost and cluster.freeze is not None and cluster.freeze.node_id == node.node_id:
        engine.unfreeze_cluster(
            tx, rollout, cluster, "AgentAnswered", f"the agent on {node.node_name} reported {step.value}", now
        )
    if report.outcome is StepOutcome.SUCCEEDED:
        _succeeded(engine, tx, rollout, cluster, node, report, now)
    elif report.outcome is StepOutcome.REFUSED and report.refusal is RefusalReason.STALE_EPOCH:
        # A newer writer holds this rollout (I6): forget the step, open a new attempt if we ever hold it again.
        node.attempt += 1
        engine.touch_node(rollout, cluster, node)
        log.bind(rollout=rollout.rollout_id).warning("agent refused a stale epoch: another writer holds the rollout")
        return
    else:
        what = "refused" if report.outcome is StepOutcome.REFUSED else "failed"
        reason = report.reason or (report.refusal.value if report.refusal else what)
        detail = report.message or f"{step.value} {what}"
        if report.blocking_pods:
            pods = ", ".join(f"{p.namespace}/{p.name}" for p in report.blocking_pods[:5])
            detail += f" (blocked by {pods})"
        fail_node(engine, tx, rollout, cluster, node, step, reason, detail, now)
    progress.advance(engine, tx, rollout, now, only=cluster.cluster_id)


def _succeeded(
    engine: Engine,
    tx: SyncTx,
    rollout: Rollout,
    cluster: ClusterRec,
    node: NodeRec,
    report: NodeStepReported,
    now: datetime,
) -> None:
    step = report.step
    kubelet: str | None = None
    if step is StepKind.CORDON:
        node.cordoned_by_us = not report.was_cordoned
        node.pre_cordoned = report.was_cordoned
    elif step is StepKind.DRAIN:
        node.drained = True
    elif step is StepKind.UPGRADE:
        node.current_version = rollout.spec.target_version
    elif step is StepKind.VERIFY:
        seen = skew.parse(report.kubelet_version)
        target = skew.parse(rollout.spec.target_version)
        if seen is not None and target is not None and seen != target:
            fail_node(
                engine,
                tx,
                rollout,
                cluster,
                node,
                step,
                "VersionMismatch",
                f"verify saw kubelet {report.kubelet_version}, expected {rollout.spec.target_version}",
                now,
            )
            return
        node.verified = True
        kubelet = report.kubelet_version or rollout.spec.target_version
        node.current_version = kubelet
        inventory.note_verified(engine, cluster.cluster_id, node.node_id, kubelet)
    elif step is StepKind.UNCORDON:
        node.cordoned_by_us = False
        node.drained = False
    elif step is StepKind.ROLLBACK:
        node.rolled_back = True
        kubelet = report.kubelet_version or node.from_version
        node.current_version = kubelet
    engine.touch_node(rollout, cluster, node)
    if node.state is NodeStepState.FAILED:
        return  # giving a failed node back does not change its state
    to = STATE_AFTER[step]
    if step is StepKind.UNCORDON or (node.direction is Direction.ROLLBACK or step is StepKind.ROLLBACK):
        pass
    elif to is node.state:
        return
    message = report.message
    engine.node_to(
        tx, rollout, cluster, node, to, now, step=step, reason="StepSucceeded", message=message, kubelet=kubelet
    )


def fail_node(
    engine: Engine,
    tx: SyncTx,
    rollout: Rollout,
    cluster: ClusterRec,
    node: NodeRec,
    step: StepKind,
    reason: str,
    message: str,
    now: datetime,
) -> None:
    """A node failed: record it, stop taking new nodes in its cluster and give back what can be (I7, I9)."""
    node.failed_step = step
    node.resume_state = node.state
    node.failure = f"{step.value} {reason}: {message}"[:4096]
    engine.record_failure(
        rollout,
        FailureRec(
            cluster_id=cluster.cluster_id,
            node_id=node.node_id,
            step=step,
            reason=reason,
            message=message,
            at=now.timestamp(),
        ),
    )
    engine.node_to(tx, rollout, cluster, node, NodeStepState.FAILED, now, step=step, reason=reason, message=message)
    for other in cluster.nodes:
        busy = other is node or other.state is NodeStepState.FAILED or other.succeeded
        # A rollback under way on another node finishes; one not started stops (scheduling.next_step).
        returning = other.rollback and (other.rolled_back or other.cordoned_by_us or other.in_flight is not None)
        if not busy and not other.wind_down and not returning:
            other.wind_down = True
            engine.touch_node(rollout, cluster, other)
    log.bind(rollout=rollout.rollout_id, cluster=cluster.cluster_id, node=node.node_id).warning(
        "node failed at %s: %s", step.value, message
    )
    progress.check_gates(engine, tx, rollout, now)


# --- health (heartbeat) -----------------------------------------------------------------------------------


def _rollouts_with(engine: Engine, cluster_id: str) -> list[tuple[Rollout, ClusterRec]]:
    found = []
    for rollout in engine.rollouts.values():
        cluster = rollout.clusters.get(cluster_id)
        if cluster is not None and not rollout.final:
            found.append((rollout, cluster))
    return found


def on_node_health(engine: Engine, tx: SyncTx, event: NodeHealthChanged, now: datetime) -> None:
    cluster_model = engine.fleet.get(event.cluster_id)
    if cluster_model is None:
        return
    node = cluster_model.nodes.get(event.node_id)
    if node is not None:
        node.health = event.to
        engine.dirty_fleet.add(event.cluster_id)
    for rollout, cluster in _rollouts_with(engine, event.cluster_id):
        if event.to is not NodeHealth.READY and cluster.state in _WATCHED and event.node_id not in cluster.not_ready:
            ours = next((n for n in cluster.nodes if n.node_id == event.node_id), None)
            being_upgraded = ours is not None and (
                ours.in_flight in (StepKind.UPGRADE, StepKind.VERIFY, StepKind.ROLLBACK)
                or ours.state in (NodeStepState.DRAINED, NodeStepState.UPGRADED)
            )
            if not being_upgraded:  # the verify step judges a node we are upgrading
                cluster.not_ready = [*cluster.not_ready, event.node_id]
                engine.touch_cluster(rollout, cluster)
                engine.record_failure(
                    rollout,
                    FailureRec(
                        cluster_id=cluster.cluster_id,
                        node_id=event.node_id,
                        reason=f"Node{event.to.value}",
                        message=f"node {event.node_name} went {event.to.value} during the rollout: {event.reason}",
                        at=now.timestamp(),
                    ),
                )
        progress.advance(engine, tx, rollout, now)


def on_cluster_health(engine: Engine, tx: SyncTx, event: ClusterHealthChanged, now: datetime) -> None:
    cluster_model = engine.fleet.get(event.cluster_id)
    if cluster_model is None:
        return
    cluster_model.health = event.to
    cluster_model.api_servers_ready = event.api_servers_ready
    cluster_model.api_servers_total = event.api_servers_total
    engine.dirty_fleet.add(event.cluster_id)
    for rollout, cluster in _rollouts_with(engine, event.cluster_id):
        if event.to is ClusterHealth.UNREACHABLE and cluster.state in ACTIVE_CLUSTER:
            engine.freeze_cluster(
                tx,
                rollout,
                cluster,
                FreezeReason.CLUSTER_UNREACHABLE,
                f"cluster {cluster.cluster_id} is Unreachable ({event.reason}); its upgrade is frozen until it is back",
                now,
            )
        elif (
            event.to is not ClusterHealth.UNREACHABLE
            and cluster.freeze is not None
            and cluster.freeze.reason is FreezeReason.CLUSTER_UNREACHABLE
        ):
            engine.unfreeze_cluster(
                tx, rollout, cluster, "ClusterReachable", f"cluster {cluster.cluster_id} is {event.to.value}", now
            )
        progress.advance(engine, tx, rollout, now)


# --- inventory (registration) ------------------------------------------------------------------------------


def on_cluster_info(engine: Engine, info: ClusterInfo) -> None:
    fleet_model.apply_cluster_info(engine.fleet, info)
    engine.dirty_fleet.add(info.cluster_id)


def on_node_facts(
    engine: Engine, tx: SyncTx, cluster_id: str, facts: NodeFacts, now: datetime, changed: list[str] | None = None
) -> None:
    """A node's inventory: flags a version drift (inventory.py) and moves clusters waiting for their inventory."""
    for rollout in inventory.on_node_facts(engine, tx, cluster_id, facts, changed, now):
        if not rollout.final:
            progress.advance(engine, tx, rollout, now)


def on_node_removed(engine: Engine, event: NodeRemoved) -> None:
    cluster = engine.fleet.get(event.cluster_id)
    if cluster is not None and cluster.nodes.pop(event.node_id, None) is not None:
        engine.dirty_fleet.add(event.cluster_id)


# --- the tick ----------------------------------------------------------------------------------------------


def _lost_contact(
    engine: Engine, tx: SyncTx, rollout: Rollout, cluster: ClusterRec, node: NodeRec, now: datetime
) -> None:
    """No report on a step past its deadline: the command may still run, so the node's state is unknown.

    Freeze the cluster (I7) and keep the step in flight: a late report is still applied (and lifts the
    freeze); an agent that sees the deadline passed refuses the command, which fails the node cleanly.
    """
    step = node.in_flight.value if node.in_flight else "step"
    waited = round(now.timestamp() - node.issued_at)
    message = f"no report from the agent on {node.node_name} {waited} s after issuing {step}; its cluster is frozen"
    engine.record_failure(
        rollout,
        FailureRec(
            cluster_id=cluster.cluster_id,
            node_id=node.node_id,
            step=node.in_flight,
            reason="StepTimeout",
            message=message,
            at=now.timestamp(),
        ),
    )
    engine.freeze_cluster(tx, rollout, cluster, FreezeReason.LOST_CONTACT, message, now, node_id=node.node_id)


def tick(engine: Engine, tx: SyncTx, now: datetime) -> None:
    """Time-driven moves: step timeouts, soak ends, windows opening, rollouts whose lease we just got."""
    stamp = now.timestamp()
    for rollout in list(engine.rollouts.values()):
        if rollout.final and not any(
            n.in_flight or n.cordoned_by_us for c in rollout.clusters.values() for n in c.nodes
        ):
            continue
        if engine.epoch_of(rollout.rollout_id) is None:
            continue
        for cluster in rollout.clusters.values():
            if cluster.freeze is not None:
                continue
            late = [
                n for n in cluster.nodes if n.in_flight is not None and stamp > n.deadline + engine.timeouts.grace_s
            ]
            if late:
                _lost_contact(engine, tx, rollout, cluster, late[0], now)
        progress.advance(engine, tx, rollout, now)
        progress.check_stall(engine, tx, rollout, now)
