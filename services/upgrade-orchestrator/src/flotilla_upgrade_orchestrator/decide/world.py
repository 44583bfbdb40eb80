"""Deciding on what the world says: an agent's step report, a node's or cluster's health, a node's
inventory, the clock passing deadlines, and a lease taken over. Pure: a view in, intents out.

A report is applied only to the command in flight that it names (the caller found it there), so a
duplicate, a reordered or a delayed report never moves a node backwards nor repeats a step (I4).
"""

from __future__ import annotations

from datetime import datetime

from flotilla_contracts.v1.agent import NodeStepReported, RefusalReason, StepKind, StepOutcome
from flotilla_contracts.v1.heartbeat import ClusterHealth as Health
from flotilla_contracts.v1.heartbeat import NodeHealth as Node
from flotilla_contracts.v1.upgrade_status import (
    ClusterRolloutState,
    Direction,
    FreezeReason,
    NodeStepState,
    VersionDriftDetected,
)
from flotilla_upgrade_orchestrator import inventory, skew
from flotilla_upgrade_orchestrator.decide.facts import (
    Advance,
    ClusterHealth,
    Decision,
    Gates,
    Inventory,
    NodeHealth,
    Report,
    Stall,
    TakeOver,
)
from flotilla_upgrade_orchestrator.decide.intents import (
    Answered,
    Emit,
    Fail,
    Freeze,
    FreezeCluster,
    Intent,
    NodeTo,
    Note,
    Resend,
    SetCluster,
    SetKubelet,
    SetNode,
    SetRollout,
    UnfreezeCluster,
)
from flotilla_upgrade_orchestrator.decide.view import View
from flotilla_upgrade_orchestrator.model import ACTIVE_CLUSTER, STATE_AFTER, ClusterRec, FailureRec, NodeRec

_WATCHED = frozenset({*ACTIVE_CLUSTER, ClusterRolloutState.SOAKING})


# --- step reports --------------------------------------------------------------------------------------------


def report(v: View, fact: Report, now: datetime) -> Decision:
    cluster = v.cluster(fact.cluster_id)
    node = v.node(fact.cluster_id, fact.node_id)
    rep = fact.report
    if node.command_id != rep.command_id or node.in_flight is not rep.step:
        return Decision()  # superseded: a duplicate or a report on an older command (I4)
    cid, step = cluster.cluster_id, rep.step
    out: list[Intent] = [Answered(cid, node.node_id)]
    lost = cluster.freeze is not None and cluster.freeze.reason is FreezeReason.LOST_CONTACT
    if lost and cluster.freeze is not None and cluster.freeze.node_id == node.node_id:
        out.append(UnfreezeCluster(cid, "AgentAnswered", f"the agent on {node.node_name} reported {step.value}"))
    if rep.outcome is StepOutcome.SUCCEEDED:
        moves, failed = _succeeded(v, cluster, node, rep, now)
        out += moves
    elif rep.outcome is StepOutcome.REFUSED and rep.refusal is RefusalReason.STALE_EPOCH:
        # A newer writer holds this rollout (I6): forget the step, open a new attempt if we ever hold it again.
        out.append(SetNode(cid, node.node_id, {"attempt": node.attempt + 1}))
        out.append(Note("warning", "agent refused a stale epoch: another writer holds the rollout", cid, node.node_id))
        return Decision(out)
    else:
        what = "refused" if rep.outcome is StepOutcome.REFUSED else "failed"
        reason = rep.reason or (rep.refusal.value if rep.refusal else what)
        detail = rep.message or f"{step.value} {what}"
        if rep.blocking_pods:
            detail += f" (blocked by {', '.join(f'{p.namespace}/{p.name}' for p in rep.blocking_pods[:5])})"
        out += fail_node(cluster, node, step, reason, detail, now)
        failed = True
    return Decision(out, (Gates(), Advance(cid)) if failed else (Advance(cid),))


def _succeeded(
    v: View, cluster: ClusterRec, node: NodeRec, rep: NodeStepReported, now: datetime
) -> tuple[list[Intent], bool]:
    """The moves a successful step brings, and whether the node failed after all (a verify at another version)."""
    cid, step, target = cluster.cluster_id, rep.step, v.rollout.spec.target_version
    kubelet: str | None = None
    changes: dict[str, object] = {}
    out: list[Intent] = []
    if step is StepKind.CORDON:
        changes = {"cordoned_by_us": not rep.was_cordoned, "pre_cordoned": rep.was_cordoned}
    elif step is StepKind.DRAIN:
        changes = {"drained": True}
    elif step is StepKind.UPGRADE:
        changes = {"current_version": target}
    elif step is StepKind.VERIFY:
        seen, wanted = skew.parse(rep.kubelet_version), skew.parse(target)
        if seen is not None and wanted is not None and seen != wanted:
            why = f"verify saw kubelet {rep.kubelet_version}, expected {target}"
            return fail_node(cluster, node, step, "VersionMismatch", why, now), True
        kubelet = rep.kubelet_version or target
        changes = {"verified": True, "current_version": kubelet}
        out.append(SetKubelet(cid, node.node_id, kubelet))
    elif step is StepKind.UNCORDON:
        changes = {"cordoned_by_us": False, "drained": False}
    elif step is StepKind.ROLLBACK:
        kubelet = rep.kubelet_version or node.from_version
        changes = {"rolled_back": True, "current_version": kubelet}
    out.insert(0, SetNode(cid, node.node_id, changes))
    if node.state is NodeStepState.FAILED:
        return out, False  # giving a failed node back does not change its state
    to = STATE_AFTER[step]
    moves_anyway = step is StepKind.UNCORDON or node.direction is Direction.ROLLBACK or step is StepKind.ROLLBACK
    if to is node.state and not moves_anyway:
        return out, False
    out.append(NodeTo(cid, node.node_id, to, step, "StepSucceeded", rep.message, kubelet))
    return out, False


def fail_node(
    cluster: ClusterRec, node: NodeRec, step: StepKind, reason: str, message: str, now: datetime
) -> list[Intent]:
    """A node failed: record it, stop taking new nodes in its cluster and give back what can be (I7, I9)."""
    cid = cluster.cluster_id
    record = FailureRec(
        cluster_id=cid, node_id=node.node_id, step=step, reason=reason, message=message, at=now.timestamp()
    )
    changes = {"failed_step": step, "resume_state": node.state, "failure": f"{step.value} {reason}: {message}"[:4096]}
    out: list[Intent] = [
        SetNode(cid, node.node_id, changes),
        Fail(record),
        NodeTo(cid, node.node_id, NodeStepState.FAILED, step, reason, message),
    ]
    for other in cluster.nodes:
        busy = other is node or other.state is NodeStepState.FAILED or other.succeeded
        # A rollback under way on another node finishes; one not started stops (scheduling.next_step).
        returning = other.rollback and (other.rolled_back or other.cordoned_by_us or other.in_flight is not None)
        if not busy and not other.wind_down and not returning:
            out.append(SetNode(cid, other.node_id, {"wind_down": True}))
    out.append(Note("warning", f"node failed at {step.value}: {message}", cid, node.node_id))
    return out


# --- health and inventory ------------------------------------------------------------------------------------


def node_health(v: View, fact: NodeHealth, now: datetime) -> Decision:
    """A node going NotReady in a cluster we work on counts against the failure budget, unless it is the node
    we are upgrading (the verify step judges that one)."""
    event = fact.event
    cluster = v.cluster(event.cluster_id)
    out: list[Intent] = []
    if event.to is not Node.READY and cluster.state in _WATCHED and event.node_id not in cluster.not_ready:
        ours = next((n for n in cluster.nodes if n.node_id == event.node_id), None)
        being_upgraded = ours is not None and (
            ours.in_flight in (StepKind.UPGRADE, StepKind.VERIFY, StepKind.ROLLBACK)
            or ours.state in (NodeStepState.DRAINED, NodeStepState.UPGRADED)
        )
        if not being_upgraded:
            record = FailureRec(
                cluster_id=cluster.cluster_id,
                node_id=event.node_id,
                reason=f"Node{event.to.value}",
                message=f"node {event.node_name} went {event.to.value} during the rollout: {event.reason}",
                at=now.timestamp(),
            )
            out = [SetCluster(cluster.cluster_id, {"not_ready": [*cluster.not_ready, event.node_id]}), Fail(record)]
    return Decision(out, (Advance(),))


def cluster_health(v: View, fact: ClusterHealth, now: datetime) -> Decision:
    """An Unreachable cluster's upgrade freezes (I7) until it is back."""
    event = fact.event
    cluster = v.cluster(event.cluster_id)
    cid = cluster.cluster_id
    out: list[Intent] = []
    if event.to is Health.UNREACHABLE and cluster.state in ACTIVE_CLUSTER:
        why = f"cluster {cid} is Unreachable ({event.reason}); its upgrade is frozen until it is back"
        out.append(FreezeCluster(cid, FreezeReason.CLUSTER_UNREACHABLE, why))
    elif (
        event.to is not Health.UNREACHABLE
        and cluster.freeze is not None
        and cluster.freeze.reason is FreezeReason.CLUSTER_UNREACHABLE
    ):
        out.append(UnfreezeCluster(cid, "ClusterReachable", f"cluster {cid} is {event.to.value}"))
    return Decision(out, (Advance(),))


def node_inventory(v: View, fact: Inventory, now: datetime) -> Decision:
    """A drift (a node reporting a version below the target after the rollout brought its cluster there) is
    announced, kept in the rollout's failures (status) and freezes a rollout still running (I7)."""
    rollout, node = v.rollout, fact.node
    cluster = v.cluster(fact.cluster_id)
    out: list[Intent] = []
    for component, version in inventory.drifts(rollout, cluster, node, set(fact.moved)):
        cid = cluster.cluster_id
        message = (
            f"{node.node_name} in {cid} reports {component} {version} after the rollout brought the cluster to "
            f"{cluster.target_version}"
        )
        drift = VersionDriftDetected(
            rollout_id=rollout.rollout_id,
            cluster_id=cid,
            node_id=node.node_id,
            node_name=node.node_name,
            component=component,
            reported_version=version,
            target_version=cluster.target_version,
            message=message,
            occurred_at=now,
        )
        record = FailureRec(
            cluster_id=cid, node_id=node.node_id, reason="VersionDrift", message=message, at=now.timestamp()
        )
        out += [Emit(drift, {"rollout_id": rollout.rollout_id}), Fail(record), SetRollout({})]
        out.append(Note("warning", f"version drift: {message}", cid, node.node_id))
        if not rollout.final:
            out.append(Freeze(FreezeReason.VERSION_DRIFT, message, cluster_id=cid, node_id=node.node_id))
    return Decision(out, () if rollout.final else (Advance(),))


# --- the clock and the lease ------------------------------------------------------------------------------------


def tick(v: View, now: datetime) -> Decision:
    """Time-driven moves: step timeouts, soak ends, windows opening, rollouts whose lease we just got, stalls."""
    rollout = v.rollout
    outstanding = any(n.in_flight or n.cordoned_by_us for c in rollout.clusters.values() for n in c.nodes)
    if (rollout.final and not outstanding) or v.epoch is None:
        return Decision()
    out: list[Intent] = []
    for cluster in rollout.clusters.values():
        if cluster.freeze is not None:
            continue
        late = [
            n for n in cluster.nodes if n.in_flight is not None and now.timestamp() > n.deadline + v.timeouts.grace_s
        ]
        if late:
            out += _lost_contact(cluster, late[0], now)
    return Decision(out, (Advance(), Stall()))


def _lost_contact(cluster: ClusterRec, node: NodeRec, now: datetime) -> list[Intent]:
    """No report on a step past its deadline: the command may still run, so the node's state is unknown.

    Freeze the cluster (I7) and keep the step in flight: a late report is still applied (and lifts the
    freeze); an agent that sees the deadline passed refuses the command, which fails the node cleanly.
    """
    step = node.in_flight.value if node.in_flight else "step"
    waited = round(now.timestamp() - node.issued_at)
    message = f"no report from the agent on {node.node_name} {waited} s after issuing {step}; its cluster is frozen"
    record = FailureRec(
        cluster_id=cluster.cluster_id,
        node_id=node.node_id,
        step=node.in_flight,
        reason="StepTimeout",
        message=message,
        at=now.timestamp(),
    )
    return [Fail(record), FreezeCluster(cluster.cluster_id, FreezeReason.LOST_CONTACT, message, node.node_id)]


def take_over(v: View, fact: TakeOver) -> Decision:
    """The lease is ours at a newer epoch than the row's: re-send every step in flight at it (failover.py)."""
    rollout = v.rollout
    before = rollout.rec.epoch
    if fact.epoch <= before:
        return Decision()
    inflight = [
        (c.cluster_id, n.node_id) for c in rollout.clusters.values() for n in c.nodes if n.in_flight is not None
    ]
    out: list[Intent] = [Resend(cid, nid, fact.epoch) for cid, nid in inflight]
    out.append(SetRollout({"epoch": fact.epoch}))
    if before:
        text = f"took the rollout over at epoch {fact.epoch} (was {before}); {len(inflight)} step(s) in flight re-sent"
        out.append(Note("info", text))
    return Decision(out)
