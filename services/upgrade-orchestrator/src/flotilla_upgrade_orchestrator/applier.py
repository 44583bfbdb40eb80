"""Carrying decisions out: `run` asks `decide` about a fact, applies the intents it returns in the caller's
transaction (records, events, commands) and asks again for each follow-up until nothing is left.

This is the only place that changes a rollout. Moves go through the engine's transitions (transitions.py),
which check machine.py's tables; a decision that never settles, or a refusal after something was applied,
is a bug and raises, so the work's transaction rolls back.
"""

from __future__ import annotations

from collections import deque
from datetime import datetime
from typing import Any

from flotilla_runtime.errors import RequestError
from flotilla_runtime.store import SyncTx
from flotilla_upgrade_orchestrator import fleet as fleet_model
from flotilla_upgrade_orchestrator.decide import View, decide
from flotilla_upgrade_orchestrator.decide.facts import Fact
from flotilla_upgrade_orchestrator.decide.intents import (
    Answered,
    ClusterTo,
    Emit,
    Fail,
    Freeze,
    FreezeCluster,
    Intent,
    Issue,
    MarkActive,
    NodeTo,
    Note,
    Refuse,
    Reply,
    Resend,
    RolloutTo,
    SetCluster,
    SetKubelet,
    SetNode,
    SetRollout,
    SetWave,
    Unfreeze,
    UnfreezeCluster,
    WaveTo,
)
from flotilla_upgrade_orchestrator.engine import Engine, log
from flotilla_upgrade_orchestrator.model import ClusterRec, NodeRec, Rollout


class DecisionLoop(RuntimeError):
    """`decide` kept asking for more passes than the rollout can need: a bug; the work is rolled back."""


def view(engine: Engine, rollout: Rollout) -> View:
    return View(
        rollout=rollout,
        fleet=engine.fleet,
        timeouts=engine.timeouts,
        epoch=engine.epoch_of(rollout.rollout_id),
        windows=engine.windows(rollout),
        active_at=engine.active_at.get(rollout.rollout_id),
        disruption=engine.disrupted_for(rollout),
    )


def run(engine: Engine, tx: SyncTx, rollout: Rollout, fact: Fact, now: datetime) -> str:
    """Decide on `fact` and everything it leads to; the reply a command's decision gave ("" if none)."""
    pending: deque[Fact] = deque([fact])
    limit = 100 + 10 * (len(rollout.clusters) + len(rollout.waves))
    reply, passes = "", 0
    while pending:
        passes += 1
        if passes > limit:
            raise DecisionLoop(f"rollout {rollout.rollout_id}: still deciding after {limit} passes ({pending[0]!r})")
        decision = decide(view(engine, rollout), pending.popleft(), now)
        refusal = next((i for i in decision.intents if isinstance(i, Refuse)), None)
        if refusal is not None:
            if passes > 1 or len(decision.intents) > 1:
                raise DecisionLoop(f"rollout {rollout.rollout_id}: a refusal after moves ({refusal.message})")
            raise RequestError(refusal.code, refusal.message, **dict(refusal.details))
        reply = apply(engine, tx, rollout, decision.intents, now) or reply
        pending.extendleft(reversed(decision.then))
    return reply


def _node(cluster: ClusterRec, node_id: str) -> NodeRec:
    return next(n for n in cluster.nodes if n.node_id == node_id)


def _set(record: Any, changes: dict[str, Any] | Any) -> None:
    fields = type(record).__struct_fields__
    for name, value in changes.items():
        if name not in fields:
            raise AttributeError(f"{type(record).__name__} has no field {name!r}")
        setattr(record, name, value)


def apply(engine: Engine, tx: SyncTx, rollout: Rollout, intents: list[Intent], now: datetime) -> str:
    """Carry out `intents` in order; returns the last reply among them."""
    reply = ""
    for intent in intents:
        match intent:
            case NodeTo():
                cluster = rollout.clusters[intent.cluster_id]
                node = _node(cluster, intent.node_id)
                engine.node_to(
                    tx, rollout, cluster, node, intent.to, now, step=intent.step, reason=intent.reason,
                    message=intent.message, kubelet=intent.kubelet, retry=intent.retry,
                )  # fmt: skip
            case SetNode():
                cluster = rollout.clusters[intent.cluster_id]
                node = _node(cluster, intent.node_id)
                _set(node, intent.changes)
                engine.touch_node(rollout, cluster, node)
            case Answered():
                cluster = rollout.clusters[intent.cluster_id]
                node = _node(cluster, intent.node_id)
                engine.inflight.pop(node.command_id, None)
                node.in_flight = None
                engine.touch_node(rollout, cluster, node)
                engine.mark_active(rollout, now)
            case ClusterTo():
                cluster = rollout.clusters[intent.cluster_id]
                engine.cluster_to(tx, rollout, cluster, intent.to, now, intent.reason, intent.message)
            case SetCluster():
                cluster = rollout.clusters[intent.cluster_id]
                _set(cluster, intent.changes)
                engine.touch_cluster(rollout, cluster)
            case WaveTo():
                engine.wave_to(tx, rollout, rollout.waves[intent.index], intent.to, now, intent.reason)
            case SetWave():
                _set(rollout.waves[intent.index], intent.changes)
                engine.touch(rollout, now)
            case RolloutTo():
                engine.rollout_to(tx, rollout, intent.to, now, intent.reason, intent.message)
            case SetRollout():
                _set(rollout.rec, intent.changes)
                engine.touch(rollout, now)
            case Freeze():
                engine.freeze(
                    tx,
                    rollout,
                    intent.reason,
                    intent.message,
                    now,
                    cluster_id=intent.cluster_id,
                    node_id=intent.node_id,
                )
            case Unfreeze():
                engine.unfreeze(tx, rollout, intent.reason, intent.message, now, resume=intent.resume)
            case FreezeCluster():
                cluster = rollout.clusters[intent.cluster_id]
                engine.freeze_cluster(tx, rollout, cluster, intent.reason, intent.message, now, intent.node_id)
            case UnfreezeCluster():
                cluster = rollout.clusters[intent.cluster_id]
                engine.unfreeze_cluster(tx, rollout, cluster, intent.reason, intent.message, now)
            case Issue():
                cluster = rollout.clusters[intent.cluster_id]
                engine.issue(tx, rollout, cluster, _node(cluster, intent.node_id), intent.step, rollout.rec.epoch, now)
            case Resend():
                cluster = rollout.clusters[intent.cluster_id]
                engine.resend(tx, rollout, cluster, _node(cluster, intent.node_id), intent.epoch, now)
            case Fail():
                engine.record_failure(rollout, intent.failure)
            case Emit():
                engine.emit(tx, intent.message, **intent.ids)
            case SetKubelet():
                known = engine.fleet.get(intent.cluster_id, fleet_model.FleetCluster(cluster_id=intent.cluster_id))
                fleet_node = known.nodes.get(intent.node_id)
                if fleet_node is not None and fleet_node.kubelet_version != intent.version:
                    fleet_node.kubelet_version = intent.version  # the verify report is the kubelet as it reports it
                    engine.dirty_fleet.add(intent.cluster_id)
            case MarkActive():
                engine.mark_active(rollout, now)
            case Note():
                ids = {"cluster": intent.cluster_id, "node": intent.node_id}
                bound = log.bind(rollout=rollout.rollout_id, **{k: v for k, v in ids.items() if v is not None})
                getattr(bound, intent.level)(intent.text)
            case Reply():
                reply = intent.message
            case Refuse():
                raise RequestError(intent.code, intent.message, **dict(intent.details))
    return reply
