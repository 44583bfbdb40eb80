"""Which clusters a `retry` reopens at once and which only once they settle: the rule, apart from doing it.

A cluster whose node failed is not Failed at once: it first gives its other nodes back (steps in flight
finish, nodes we cordoned are uncordoned, I9), and the rollout is usually Frozen already (I7). A user who
types `retry` then is not refused: the retry is queued on the cluster and reopens it the moment it settles
as Failed. So no node gets a new attempt while a step of its cluster is still under way (I4), and the
freeze is lifted only then, and only if the failure budget holds again (I7), exactly as for a retry asked
for after the cluster settled.
"""

from __future__ import annotations

from dataclasses import dataclass

from flotilla_contracts.v1.upgrade_status import ClusterRolloutState, NodeStepState, RolloutState
from flotilla_upgrade_orchestrator.model import ClusterRec, NodeRec, Rollout
from flotilla_upgrade_orchestrator.scheduling import cluster_outstanding, settled

# A rollout in one of these takes no retry (nor runs one that was queued).
CLOSED = frozenset({RolloutState.ABORTED, RolloutState.ROLLED_BACK, RolloutState.ROLLING_BACK})
_UPGRADING = frozenset({ClusterRolloutState.UPGRADING_CONTROL_PLANE, ClusterRolloutState.UPGRADING_WORKERS})


@dataclass(frozen=True)
class RetryDecision:
    """Clusters to reopen now, clusters whose retry waits for them to settle, or why there is nothing to do."""

    now: tuple[ClusterRec, ...] = ()
    queued: tuple[ClusterRec, ...] = ()
    refusal: str = ""


def failing(cluster: ClusterRec) -> bool:
    """A node failed while the cluster upgrades: it becomes Failed as soon as its other nodes settle."""
    working = cluster.state in _UPGRADING or (
        cluster.state is ClusterRolloutState.FROZEN and cluster.resume_state in _UPGRADING
    )
    return working and any(n.state is NodeStepState.FAILED for n in cluster.nodes)


def unsettled(cluster: ClusterRec) -> int:
    """Nodes of the cluster with a step in flight or something left to do before it settles."""
    return sum(1 for n in cluster.nodes if not settled(n))


def closed(rollout: Rollout) -> bool:
    """A retry is refused (and a queued one waits) when the rollout ended or is on its way back."""
    return rollout.state in CLOSED or rollout.rolling_back


def reopened(cluster: ClusterRec) -> list[NodeRec]:
    """The nodes a retry gives a new attempt: every one not upgraded and given back, with nothing in flight."""
    return [n for n in cluster.nodes if not n.succeeded and n.in_flight is None]


def _retryable_now(cluster: ClusterRec) -> bool:
    return cluster.state is ClusterRolloutState.FAILED and not cluster_outstanding(cluster)


def _queueable(cluster: ClusterRec) -> bool:
    return failing(cluster) or (cluster.state is ClusterRolloutState.FAILED and cluster_outstanding(cluster))


def decide(rollout: Rollout, cluster_id: str | None = None) -> RetryDecision:
    """What `retry` does to the rollout's failed clusters (or to the one named), checked against their state."""
    if cluster_id is not None:
        cluster = rollout.clusters[cluster_id]
        if _retryable_now(cluster):
            return RetryDecision(now=(cluster,))
        if _queueable(cluster):
            return RetryDecision(queued=(cluster,))
        return RetryDecision(refusal=f"cluster {cluster_id} is {cluster.state.value}, not Failed")
    now = tuple(c for c in rollout.clusters.values() if _retryable_now(c))
    queued = tuple(c for c in rollout.clusters.values() if _queueable(c))
    if not now and not queued:
        return RetryDecision(refusal=f"rollout {rollout.rollout_id} has no failed cluster to retry" + _instead(rollout))
    return RetryDecision(now=now, queued=queued)


def _instead(rollout: Rollout) -> str:
    """What to do instead of a retry that has nothing to retry, for a rollout that waits on a person."""
    freeze = rollout.rec.freeze
    if freeze is not None:
        return (
            f"; it is Frozen ({freeze.reason.value}: {freeze.message}): fix the cause, then `resume`, "
            "or `rollback` / `abort`"
        )
    if rollout.state is RolloutState.PAUSED:
        return "; it is Paused: `resume` it"
    return ""


def due(rollout: Rollout, cluster: ClusterRec) -> bool:
    """A queued retry takes effect now: the cluster settled as Failed and the rollout still takes retries."""
    return cluster.retry_queued and _retryable_now(cluster) and not closed(rollout)
