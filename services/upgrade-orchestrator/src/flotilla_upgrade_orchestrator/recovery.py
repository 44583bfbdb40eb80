"""Getting a rollout past trouble: retry failed clusters against the pinned target, skip a cluster, and
roll back (patch-level: every upgraded node; minor: workers only, the control plane stays, said plainly).

Like control.py, each finds the rollout, hands the command to `decide` through applier.run and answers
with the rollout as it now is, saying what changed.
"""

from __future__ import annotations

from datetime import datetime

from flotilla_contracts.v1.upgrade import RetryRequest, RollbackRequest, SkipClusterRequest
from flotilla_contracts.v1.upgrade_status import RolloutReply, RolloutState
from flotilla_runtime.store import SyncTx
from flotilla_upgrade_orchestrator import applier, retries
from flotilla_upgrade_orchestrator.control import get, reply
from flotilla_upgrade_orchestrator.decide import facts
from flotilla_upgrade_orchestrator.engine import Engine
from flotilla_upgrade_orchestrator.model import Rollout


def retry(engine: Engine, tx: SyncTx, request: RetryRequest, now: datetime) -> RolloutReply:
    """Reopen failed clusters now; queue the retry of one still settling after a node failed (retries.py)."""
    rollout = get(engine, request.rollout_id)
    known = request.cluster_id is None or request.cluster_id in rollout.clusters
    decision = retries.decide(rollout, request.cluster_id) if known and not retries.closed(rollout) else None
    nodes = 0 if decision is None else sum(len(retries.reopened(c)) for c in decision.now)
    applier.run(engine, tx, rollout, facts.Retry(request), now)  # refuses what `decision` refused
    assert decision is not None
    return reply(rollout, _retry_message(rollout, decision, nodes))


def _retry_message(rollout: Rollout, decision: retries.RetryDecision, nodes: int) -> str:
    targets = [*decision.now, *decision.queued]
    ids = ", ".join(c.cluster_id for c in targets[:10])
    message = f"retrying {len(targets)} cluster(s) ({ids}) against the pinned target {rollout.spec.target_version}"
    waiting = [c for c in decision.queued if c.retry_queued]
    # A queued retry that ran at once (its cluster settled in this very advance) reopened its unfinished nodes.
    nodes += sum(1 for c in decision.queued if not c.retry_queued for n in c.nodes if not n.succeeded)
    if not waiting:
        return message + f"; {nodes} node(s) start a new attempt"
    if decision.now:
        message += f"; {nodes} node(s) start a new attempt now"
    shown = ", ".join(f"{c.cluster_id} ({retries.unsettled(c)} node(s))" for c in waiting[:10])
    message += (
        f"; {len(waiting)} cluster(s) still finish steps in flight and give nodes back after a node failed: "
        f"{shown}; each is retried as soon as it settles"
    )
    if rollout.state is RolloutState.FROZEN and rollout.rec.freeze is not None:
        message += f"; until then the rollout stays Frozen ({rollout.rec.freeze.reason.value})"
    return message


def skip(engine: Engine, tx: SyncTx, request: SkipClusterRequest, now: datetime) -> RolloutReply:
    rollout = get(engine, request.rollout_id)
    frozen = rollout.rec.freeze
    applier.run(engine, tx, rollout, facts.Skip(request, tx.actor), now)
    cluster = rollout.clusters[request.cluster_id]
    busy = sum(1 for n in cluster.nodes if n.in_flight or n.cordoned_by_us)
    lifted = frozen is not None and rollout.rec.freeze is None
    return reply(
        rollout,
        f"cluster {cluster.cluster_id} skipped; it no longer counts against the failure budget"
        + (f"; {busy} node(s) of ours there are being given back" if busy else "")
        + (
            f"; the failure budget holds again, so the {frozen.reason.value} freeze is lifted and the rollout is "
            f"{rollout.state.value} (no resume needed)"
            if lifted and frozen is not None
            else ""
        )
        + (f"; the rollout stays Frozen ({rollout.rec.freeze.reason.value})" if rollout.rec.freeze else ""),
    )


def rollback(engine: Engine, tx: SyncTx, request: RollbackRequest, now: datetime) -> RolloutReply:
    rollout = get(engine, request.rollout_id)
    return reply(rollout, applier.run(engine, tx, rollout, facts.Rollback(request), now))
