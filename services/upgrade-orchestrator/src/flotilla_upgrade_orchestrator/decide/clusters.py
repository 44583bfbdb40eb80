"""A cluster's own moves: settling when its nodes allow (control plane done, finished, failed, rolled back),
waiting for its inventory to reach the target, and a retry reopening it. Pure, like all of decide/."""

from __future__ import annotations

from datetime import datetime

from flotilla_contracts.v1.agent import StepKind
from flotilla_contracts.v1.upgrade_status import ClusterRolloutState, NodeStepState, WaveState
from flotilla_upgrade_orchestrator import inventory, retries, scheduling
from flotilla_upgrade_orchestrator.decide.facts import Decision
from flotilla_upgrade_orchestrator.decide.intents import (
    ClusterTo,
    Fail,
    Intent,
    NodeTo,
    SetCluster,
    SetNode,
    SetWave,
    Unfreeze,
    WaveTo,
)
from flotilla_upgrade_orchestrator.decide.view import View
from flotilla_upgrade_orchestrator.model import BUDGET_FREEZES, FINAL_WAVE, WINDING_DOWN, ClusterRec, FailureRec

C = ClusterRolloutState
_UPGRADING = (C.UPGRADING_CONTROL_PLANE, C.UPGRADING_WORKERS)


# --- settling ------------------------------------------------------------------------------------------------


def settle_cluster(v: View, cluster: ClusterRec, now: datetime) -> tuple[list[Intent], bool]:
    """The cluster's next move when its nodes allow one, and whether it has left its working state."""
    cid = cluster.cluster_id
    state = cluster.state
    if state is C.UPGRADING_CONTROL_PLANE:
        cps = [n for n in cluster.nodes if n.control_plane]
        if all(n.verified and not n.cordoned_by_us for n in cps) and any(not n.control_plane for n in cluster.nodes):
            why = f"every API server is at {cluster.target_version}; workers may move (I2)"
            return [ClusterTo(cid, C.UPGRADING_WORKERS, "ControlPlaneUpgraded", why)], False
    if state in _UPGRADING and scheduling.cluster_finished(cluster):
        failed = [n for n in cluster.nodes if n.state is NodeStepState.FAILED]
        if failed:
            failure = f"{failed[0].node_name}: {failed[0].failure}"
            return [SetCluster(cid, {"failure": failure}), ClusterTo(cid, C.FAILED, "NodeFailed", failure)], True
        held, holding = hold_until_reported(v, cluster, now)
        if holding:
            return held, False  # done means the fleet says so: the wait and its reason are in status
        if any(isinstance(i, ClusterTo) for i in held):
            return held, True  # its inventory never reached the target (the reason names the nodes)
        done = C.SOAKING if v.rollout.spec.soak_s > 0 else C.SUCCEEDED
        return [*held, ClusterTo(cid, done, "Upgraded")], True
    if state is C.ROLLING_BACK and scheduling.cluster_finished(cluster):
        # Only a node we tried to return can fail its rollback; one that failed forward and never moved
        # (no rollback step) is given back as it is and is not a rollback failure.
        failed = [n for n in cluster.nodes if n.rollback and n.state is NodeStepState.FAILED]
        if failed:
            failure = f"rollback of {failed[0].node_name}: {failed[0].failure}"
            return [SetCluster(cid, {"failure": failure}), ClusterTo(cid, C.FAILED, "RollbackFailed", failure)], True
        return [ClusterTo(cid, C.ROLLED_BACK, "RolledBack")], True
    if state in WINDING_DOWN:
        return [], not scheduling.cluster_outstanding(cluster)
    return [], False


def hold_until_reported(v: View, cluster: ClusterRec, now: datetime) -> tuple[list[Intent], bool]:
    """A cluster whose nodes all finished waits for its inventory to reach the target (True while it waits).

    The wait is stated in status (`waiting`); past `Timeouts.inventory_s` the cluster fails, naming the nodes
    and versions, which the failure budget then judges like any failed cluster (I7).
    """
    cid = cluster.cluster_id
    behind = inventory.lagging(v.fleet.get(cid), cluster.target_version)
    if not behind:
        return ([SetCluster(cid, {"waiting": "", "waiting_since": None})] if cluster.waiting else []), False
    shown = ", ".join(behind[:8]) + (f" and {len(behind) - 8} more" if len(behind) > 8 else "")
    since = cluster.waiting_since if cluster.waiting_since is not None else now.timestamp()
    waited = now.timestamp() - since
    if waited > v.timeouts.inventory_s:
        failure = (
            f"every node finished its steps but after {round(waited)} s the fleet still reports {shown}, "
            f"not {cluster.target_version}; `retry` upgrades the cluster again once its nodes are looked at"
        )
        record = FailureRec(cluster_id=cid, reason="InventoryNotAtTarget", message=failure, at=now.timestamp())
        return [
            SetCluster(cid, {"failure": failure, "waiting": "", "waiting_since": None}),
            Fail(record),
            *_fail_lagging_nodes(v, cluster),
            ClusterTo(cid, C.FAILED, "InventoryNotAtTarget", failure),
        ], False
    waiting = f"waiting for the fleet to report {cluster.target_version}: {shown}"
    if cluster.waiting != waiting or cluster.waiting_since is None:
        return [SetCluster(cid, {"waiting": waiting, "waiting_since": since})], True
    return [], True


def _fail_lagging_nodes(v: View, cluster: ClusterRec) -> list[Intent]:
    """The nodes still reporting an older version are failed (not upgraded as far as the fleet says), so a
    `retry` gives them a new attempt: upgraded again, from Pending."""
    behind = inventory.nodes_behind(v.fleet.get(cluster.cluster_id), cluster.target_version)
    out: list[Intent] = []
    message = f"the fleet reports it below {cluster.target_version} after its steps finished"
    for node in cluster.nodes:
        if node.node_id not in behind or node.state is NodeStepState.FAILED or node.in_flight is not None:
            continue
        changes = {
            "verified": False,
            "failed_step": StepKind.VERIFY,
            "resume_state": node.state,
            "failure": f"verify InventoryNotAtTarget: {message}",
        }
        out.append(SetNode(cluster.cluster_id, node.node_id, changes))
        out.append(
            NodeTo(
                cluster.cluster_id, node.node_id, NodeStepState.FAILED, StepKind.VERIFY, "InventoryNotAtTarget", message
            )
        )
    return out


# --- retry -----------------------------------------------------------------------------------------------------


def reopen(v: View, cluster: ClusterRec, now: datetime, why: str = "") -> list[Intent]:
    """A settled Failed cluster starts again (Pending) against the pinned target: its unfinished nodes get a
    new attempt, from where they failed if they are still ours, else from Pending."""
    cid = cluster.cluster_id
    out: list[Intent] = []
    for node in retries.reopened(cluster):
        resume_at = node.resume_state if node.cordoned_by_us and node.resume_state is not None else None
        changes: dict[str, object] = {
            "attempt": node.attempt + 1,
            "wind_down": False,
            "failed_step": None,
            "failure": "",
            "resume_state": None,
        }
        if resume_at is None:
            changes["drained"] = False
        out.append(SetNode(cid, node.node_id, changes))
        again = resume_at or NodeStepState.PENDING
        if node.state is not again:
            out.append(
                NodeTo(cid, node.node_id, again, reason="Retry", message=f"attempt {node.attempt + 1}", retry=True)
            )
    retry = cluster.retries + 1
    out.append(
        SetCluster(cid, {"not_ready": [], "failure": "", "retries": retry, "retry_queued": False, "finished_at": None})
    )
    out.append(ClusterTo(cid, C.PENDING, "Retry", f"retry {retry}" + why))
    wave = v.rollout.waves[cluster.wave]
    if wave.state in FINAL_WAVE:
        out += [SetWave(wave.index, {"finished_at": None}), WaveTo(wave.index, WaveState.RUNNING, "Retry")]
    return out


def lift_budget_freeze(v: View, reason: str) -> Decision:
    """A freeze for an exceeded failure budget ends when a retry or a skip brings the rollout back within it."""
    freeze = v.rollout.rec.freeze
    if freeze is not None and freeze.reason in BUDGET_FREEZES and scheduling.budget_exceeded(v.rollout) is None:
        return Decision([Unfreeze(reason, "the failure budget holds again")])
    return Decision()
