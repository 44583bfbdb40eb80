"""Deciding on a user's command: start, pause, resume, abort, approve, retry, skip and rollback.

Each checks the command against the rollout's state first and refuses with a code and a reason (a
`Refuse`, nothing applied), else returns the moves it makes and asks for the rollout to be advanced.
"""

from __future__ import annotations

from datetime import datetime

from flotilla_contracts.errors import ErrorCode
from flotilla_contracts.v1.heartbeat import ClusterHealth
from flotilla_contracts.v1.upgrade_status import ClusterRolloutState, Direction, NodeStepState, RolloutState, WaveState
from flotilla_upgrade_orchestrator import retries
from flotilla_upgrade_orchestrator import rollback as rollback_rules
from flotilla_upgrade_orchestrator.decide.clusters import reopen
from flotilla_upgrade_orchestrator.decide.facts import (
    Abort,
    Advance,
    Approve,
    Decision,
    LiftBudgetFreeze,
    Pause,
    Resume,
    Retry,
    Rollback,
    Skip,
    Started,
)
from flotilla_upgrade_orchestrator.decide.intents import (
    ClusterTo,
    Intent,
    NodeTo,
    Refuse,
    Reply,
    RolloutTo,
    SetCluster,
    SetNode,
    SetRollout,
    SetWave,
    Unfreeze,
    UnfreezeCluster,
    WaveTo,
)
from flotilla_upgrade_orchestrator.decide.view import View
from flotilla_upgrade_orchestrator.model import FINAL_WAVE, ClusterRec, Rollout

C = ClusterRolloutState
R = RolloutState
DONE_CLUSTER = frozenset({C.SUCCEEDED, C.SKIPPED, C.ROLLED_BACK})
_ADVANCE = (Advance(),)


def conflict(rollout: Rollout, what: str) -> Decision:
    why = f"cannot {what} rollout {rollout.rollout_id}: it is {rollout.state.value}"
    if rollout.rolling_back and rollout.state is not R.ROLLING_BACK:
        why += " on its way back (a rollback); `resume` continues the rollback"
    return Decision([Refuse(ErrorCode.CONFLICT, why, {"state": rollout.state.value})])


def missing_cluster(rollout: Rollout, cluster_id: str) -> Decision:
    why = f"cluster {cluster_id} is not in rollout {rollout.rollout_id}"
    return Decision([Refuse(ErrorCode.NOT_FOUND, why, {"field": "cluster_id"})])


def in_flight(rollout: Rollout) -> int:
    return sum(1 for c in rollout.clusters.values() for n in c.nodes if n.in_flight is not None)


def wind_down(cluster: ClusterRec) -> list[Intent]:
    """Every node of ours not upgraded is given back (uncordoned) rather than taken further."""
    return [
        SetNode(cluster.cluster_id, n.node_id, {"wind_down": True})
        for n in cluster.nodes
        if not n.succeeded and not n.wind_down
    ]


def started(v: View, fact: Started) -> Decision:
    return Decision([RolloutTo(R.RUNNING, "Started", fact.message)], _ADVANCE)


def by(actor: str) -> str:
    """Who, in a reason people read: the person's name, else "a user"."""
    return actor or "a user"


def pause(v: View, fact: Pause) -> Decision:
    rollout = v.rollout
    if rollout.state is R.PAUSED:
        return Decision([Reply("already paused")])
    if rollout.state not in (R.RUNNING, R.AWAITING_APPROVAL, R.FROZEN):
        return conflict(rollout, "pause")
    out: list[Intent] = [] if rollout.state is R.FROZEN else [SetRollout({"resume_state": rollout.state})]
    out.append(RolloutTo(R.PAUSED, "Paused", fact.request.reason or f"paused by {by(fact.actor)}"))
    out.append(Reply(f"paused: no new disruption; {in_flight(rollout)} step(s) in flight finish"))
    return Decision(out)


def resume(v: View, fact: Resume) -> Decision:
    rollout = v.rollout
    if rollout.state in (R.RUNNING, R.AWAITING_APPROVAL) and rollout.rec.freeze is None:
        return Decision([Reply(f"already {rollout.state.value}: nothing to resume")])  # e.g. a skip lifted the freeze
    if rollout.state not in (R.PAUSED, R.FROZEN):
        return conflict(rollout, "resume")
    resumed = f"resumed by {by(fact.actor)}"
    out: list[Intent] = [Unfreeze("Resumed", resumed)]
    recovered = 0
    for cluster in rollout.clusters.values():
        fleet = v.fleet.get(cluster.cluster_id)
        still = [n for n in cluster.not_ready if fleet is None or n not in fleet.nodes or not fleet.nodes[n].available]
        if len(still) != len(cluster.not_ready):
            recovered += len(cluster.not_ready) - len(still)
            out.append(SetCluster(cluster.cluster_id, {"not_ready": still}))  # a resume acknowledges Ready nodes
    for cluster in rollout.clusters.values():
        if cluster.freeze is not None and v.health(cluster.cluster_id) is not ClusterHealth.UNREACHABLE:
            out.append(UnfreezeCluster(cluster.cluster_id, "Resumed", resumed))
    back = rollout.rec.resume_state or R.RUNNING
    out.append(RolloutTo(R.RUNNING if back in (R.FROZEN, R.PAUSED) else back, "Resumed", resumed))
    note = f"; {recovered} node(s) Ready again no longer count against the budget" if recovered else ""
    out.append(Reply("resumed" + note))
    return Decision(out, _ADVANCE)


def abort(v: View, fact: Abort) -> Decision:
    rollout, reason = v.rollout, fact.request.reason
    if rollout.final or rollout.rolling_back:
        return conflict(rollout, "abort")
    out: list[Intent] = [Unfreeze("Aborted", "the rollout was aborted", resume=False)]  # Frozen -> Aborted
    out += [WaveTo(w.index, WaveState.ABORTED, "Aborted") for w in rollout.waves if w.state not in FINAL_WAVE]
    for cluster in rollout.clusters.values():
        if cluster.state is C.SOAKING:
            out.append(ClusterTo(cluster.cluster_id, C.SUCCEEDED, "Aborted", "upgraded before abort"))
        elif cluster.state not in (*DONE_CLUSTER, C.FAILED):
            out.append(ClusterTo(cluster.cluster_id, C.ABORTED, "Aborted", reason))
        out += wind_down(cluster)
    give_back = sum(1 for c in rollout.clusters.values() for n in c.nodes if n.cordoned_by_us)
    message = (
        f"aborted: nothing new starts; {in_flight(rollout)} step(s) in flight finish and {give_back} node(s) we "
        "cordoned are being uncordoned" + (f" ({reason})" if reason else "")
    )
    out += [RolloutTo(R.ABORTED, "Aborted", message), Reply(message)]
    return Decision(out, _ADVANCE)


def approve(v: View, fact: Approve, now: datetime) -> Decision:
    rollout, index = v.rollout, fact.request.wave
    if index >= len(rollout.waves):
        why = f"rollout {rollout.rollout_id} has {len(rollout.waves)} wave(s), numbered from 0"
        return Decision([Refuse(ErrorCode.NOT_FOUND, why, {"field": "wave"})])
    if rollout.final or rollout.rolling_back:
        return conflict(rollout, "approve a wave of")
    wave = rollout.waves[index]
    if wave.state in FINAL_WAVE:
        why = f"wave {wave.index} is already {wave.state.value}"
        return Decision([Refuse(ErrorCode.CONFLICT, why, {"field": "wave"})])
    if wave.approved_at is not None:
        return Decision([Reply(f"wave {wave.index} was already approved")])
    note = "" if wave.requires_approval else " (it did not require approval)"
    return Decision([SetWave(index, {"approved_at": now.timestamp()}), Reply(f"wave {index} approved{note}")], _ADVANCE)


def retry(v: View, fact: Retry, now: datetime) -> Decision:
    """Reopen failed clusters now; queue the retry of one still settling after a node failed (retries.py)."""
    rollout, cluster_id = v.rollout, fact.request.cluster_id
    if retries.closed(rollout):
        return conflict(rollout, "retry")
    if cluster_id is not None and cluster_id not in rollout.clusters:
        return missing_cluster(rollout, cluster_id)
    decision = retries.decide(rollout, cluster_id)
    if decision.refusal:
        details = {"field": "cluster_id"} if cluster_id is not None else {}
        return Decision([Refuse(ErrorCode.CONFLICT, decision.refusal, details)])
    out: list[Intent] = []
    for cluster in decision.now:
        out += reopen(v, cluster, now)
    out += [SetCluster(c.cluster_id, {"retry_queued": True}) for c in decision.queued if not c.retry_queued]
    if decision.now and rollout.state is R.COMPLETED_WITH_FAILURES:
        out.append(RolloutTo(R.RUNNING, "Retry", "failed clusters are tried again"))
    return Decision(out, (LiftBudgetFreeze("Retried"), *_ADVANCE))


def skip(v: View, fact: Skip) -> Decision:
    rollout, request = v.rollout, fact.request
    cluster = rollout.clusters.get(request.cluster_id)
    if cluster is None:
        return missing_cluster(rollout, request.cluster_id)
    if rollout.state in (R.ABORTED, R.ROLLED_BACK) or rollout.rolling_back:
        return conflict(rollout, "skip a cluster of")
    if cluster.state in DONE_CLUSTER or cluster.state is C.SOAKING:
        why = f"cluster {cluster.cluster_id} is {cluster.state.value}: nothing to skip"
        return Decision([Refuse(ErrorCode.CONFLICT, why, {"field": "cluster_id"})])
    out = wind_down(cluster)
    out.append(ClusterTo(cluster.cluster_id, C.SKIPPED, "Skipped", request.reason or f"skipped by {by(fact.actor)}"))
    if rollout.state is R.COMPLETED_WITH_FAILURES:
        out.append(RolloutTo(R.RUNNING, "Skip"))
        wave = rollout.waves[cluster.wave]
        if wave.state is WaveState.COMPLETED_WITH_FAILURES:
            out.append(WaveTo(wave.index, WaveState.RUNNING, "Skip"))
    return Decision(out, (LiftBudgetFreeze("Skipped"), *_ADVANCE))


def rollback(v: View, fact: Rollback) -> Decision:
    """Patch-level: every upgraded node goes back; minor: workers only, the control plane stays (rollback.py)."""
    rollout = v.rollout
    if rollout.state is R.ROLLED_BACK or rollout.rolling_back:
        return conflict(rollout, "roll back")
    decision = rollback_rules.decide(rollout)
    message = decision.message + (f" ({fact.request.reason})" if fact.request.reason else "")
    out: list[Intent] = [Unfreeze("RollingBack", "rollback requested", resume=False)]
    out += [WaveTo(w.index, WaveState.ABORTED, "RollingBack") for w in rollout.waves if w.state not in FINAL_WAVE]
    for cluster in rollout.clusters.values():
        cid = cluster.cluster_id
        returning = set(decision.returns.get(cid, []))
        for node in cluster.nodes:
            if node.node_id in returning:
                changes = {
                    "rollback": True,
                    "direction": Direction.ROLLBACK,
                    "wind_down": False,
                    "attempt": node.attempt + 1,
                }
                out.append(SetNode(cid, node.node_id, changes))
                if node.state is NodeStepState.FAILED and node.resume_state is not None:
                    # Left Failed it would get no rollback step and, still cordoned, hold the cluster's budget.
                    to = node.resume_state
                    why = f"rollback returns it from {to.value} (it had failed: {node.failure})"
                    out.append(SetNode(cid, node.node_id, {"failed_step": None, "failure": "", "resume_state": None}))
                    out.append(NodeTo(cid, node.node_id, to, reason="RollingBack", message=why))
            elif not node.succeeded:
                out.append(SetNode(cid, node.node_id, {"wind_down": True}))
        if returning:
            if cluster.state is C.FROZEN:
                out.append(SetCluster(cid, {"resume_state": C.ROLLING_BACK}))
            else:
                out.append(ClusterTo(cid, C.ROLLING_BACK, "RollingBack"))
        elif cluster.state is C.SOAKING:
            out.append(ClusterTo(cid, C.SUCCEEDED, "RollingBack"))
        elif cluster.state not in (*DONE_CLUSTER, C.FAILED):
            out.append(ClusterTo(cid, C.ABORTED, "RollingBack"))
    out += [SetRollout({"resume_state": None}), RolloutTo(R.ROLLING_BACK, "Rollback", message), Reply(message)]
    return Decision(out, _ADVANCE)
