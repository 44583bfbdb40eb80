"""What a Running rollout that issues nothing waits for, and whether that wait ends by itself (no silent stall).

Pure: the rollout's records and the fleet read model in, plain values out. A wait that ends by itself (a
step in flight with its deadline, a maintenance window that opens at a known time, a soak, a cluster
frozen with its own reason) is not a stall. Anything else that keeps a Running rollout from issuing or
receiving anything for the no-progress time freezes it with `NoProgress` and the message built here,
naming the nodes that hold the disruption budget, the clusters that hold the concurrency slots, and so on.
The same rule, applied to the fleet before a start, is `budget_blocked`: the plan refuses a cluster whose
already unavailable nodes hold the whole budget while other nodes still have to be taken out (I1).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from flotilla_contracts.v1.heartbeat import ClusterHealth, NodeHealth
from flotilla_contracts.v1.upgrade_status import ClusterRolloutState
from flotilla_upgrade_orchestrator.fleet import FleetCluster, FleetNode
from flotilla_upgrade_orchestrator.model import ClusterRec, Rollout
from flotilla_upgrade_orchestrator.scheduling import current_wave, holds_slot, next_step, unavailable

_UPGRADING = (ClusterRolloutState.UPGRADING_CONTROL_PLANE, ClusterRolloutState.UPGRADING_WORKERS)


@dataclass(frozen=True)
class Wait:
    """One thing the rollout waits for; `ends_by_itself` when time or an agent's report ends it."""

    what: str
    ends_by_itself: bool


def _why_down(cluster: ClusterRec, node_id: str, fleet_nodes: Mapping[str, FleetNode]) -> str:
    ours = next((n for n in cluster.nodes if n.node_id == node_id), None)
    if ours is not None and ours.cordoned_by_us:
        return f"{node_id} (cordoned by this rollout, {ours.state.value})"
    seen = fleet_nodes.get(node_id)
    if seen is not None and seen.health is not NodeHealth.READY:
        return f"{node_id} ({seen.health.value})"
    return f"{node_id} (cordoned, not by this rollout)"


def budget_holders(cluster: ClusterRec, fleet_nodes: Mapping[str, FleetNode]) -> list[str]:
    """The nodes that count against max_unavailable now, each with why."""
    return [_why_down(cluster, n, fleet_nodes) for n in sorted(unavailable(cluster, fleet_nodes))]


def _cluster_wait(rollout: Rollout, cluster: ClusterRec, fleet: Mapping[str, FleetCluster]) -> Wait | None:
    cid = cluster.cluster_id
    busy = [n for n in cluster.nodes if n.in_flight is not None]
    if busy:
        step = busy[0].in_flight.value if busy[0].in_flight else "step"
        return Wait(f"cluster {cid}: {step} of {busy[0].node_name} in flight", True)
    if cluster.state is ClusterRolloutState.WAITING_WINDOW:
        opens = cluster.window_opens_at
        when = "no opening within a fortnight" if opens is None else datetime.fromtimestamp(opens, UTC).isoformat()
        return Wait(f"cluster {cid}: outside its maintenance window (opens {when})", opens is not None)
    if cluster.state is ClusterRolloutState.SOAKING:
        return Wait(f"cluster {cid}: soaking", True)
    if cluster.state is ClusterRolloutState.FROZEN and cluster.freeze is not None:
        return Wait(f"cluster {cid}: frozen ({cluster.freeze.reason.value}): {cluster.freeze.message}", True)
    if cluster.state in _UPGRADING or cluster.state is ClusterRolloutState.ROLLING_BACK:
        fleet_cluster = fleet.get(cid)
        fleet_nodes = fleet_cluster.nodes if fleet_cluster is not None else {}
        waiting = [n.node_name for n in cluster.nodes if next_step(n) is not None]
        holders = budget_holders(cluster, fleet_nodes)
        if waiting and len(holders) >= rollout.spec.max_unavailable:
            return Wait(
                f"cluster {cid}: the disruption budget (max_unavailable={rollout.spec.max_unavailable}) is held by "
                f"{', '.join(holders)}; {', '.join(waiting[:5])} cannot be taken out without breaking I1 "
                "(uncordon them, or start again with a larger --max-unavailable)",
                False,
            )
        if waiting:
            return Wait(f"cluster {cid}: {', '.join(waiting[:5])} wait(s) for a step the rules do not allow yet", False)
    return None


def waits(rollout: Rollout, fleet: Mapping[str, FleetCluster]) -> list[Wait]:
    """Everything the rollout waits for now, cluster by cluster, then the clusters that cannot start."""
    found = [w for c in rollout.clusters.values() if (w := _cluster_wait(rollout, c, fleet)) is not None]
    wave = current_wave(rollout)
    if wave is None:
        return found
    pending = [
        c
        for c in rollout.clusters.values()
        if c.wave <= wave and c.state in (ClusterRolloutState.PENDING, ClusterRolloutState.WAITING_WINDOW)
    ]
    slots = [c.cluster_id for c in rollout.clusters.values() if holds_slot(c)]
    for cluster in pending:
        health = fleet[cluster.cluster_id].health if cluster.cluster_id in fleet else ClusterHealth.UNKNOWN
        if health is ClusterHealth.UNREACHABLE:
            found.append(Wait(f"cluster {cluster.cluster_id}: Unreachable, it starts when it is reachable", False))
        elif len(slots) >= rollout.spec.max_concurrent_clusters and cluster.state is ClusterRolloutState.PENDING:
            held = ", ".join(slots[:5])
            found.append(
                Wait(
                    f"cluster {cluster.cluster_id}: waits for a slot (max_concurrent_clusters="
                    f"{rollout.spec.max_concurrent_clusters}, held by {held})",
                    False,
                )
            )
    return found


def stalled(rollout: Rollout, fleet: Mapping[str, FleetCluster], idle_s: float) -> str | None:
    """The NoProgress message when nothing the rollout waits for ends by itself; None when something will."""
    found = waits(rollout, fleet)
    if any(w.ends_by_itself for w in found):
        return None
    head = f"nothing issued and nothing received for {round(idle_s)} s"
    if not found:
        return head + "; no step is due and nothing is waited for (a defect: see `upgrade status --nodes`)"
    return head + "; waiting for: " + "; ".join(w.what for w in found[:10])


def budget_blocked(cluster: FleetCluster, moving: list[str], max_unavailable: int) -> str | None:
    """Before a start: why the cluster could not finish within max_unavailable (I1), or None.

    A node that is already unavailable (cordoned by someone else, or not Ready) is upgraded within the
    budget it already uses, first among the workers; but it stays unavailable (we uncordon only what we
    cordoned, I9), so when such nodes hold the whole budget no other node can ever be taken out.
    """
    down = sorted(n.node_id for n in cluster.nodes.values() if not n.available)
    to_take = [n for n in moving if n in cluster.nodes and cluster.nodes[n].available]
    if not to_take or len(down) < max_unavailable:
        return None
    shown = ", ".join(down[:5]) + (" ..." if len(down) > 5 else "")
    return (
        f"cluster {cluster.cluster_id}: {len(down)} node(s) already unavailable ({shown}) hold the whole disruption "
        f"budget (max_unavailable={max_unavailable}), so {len(to_take)} other node(s) could never be taken out "
        f"(I1); uncordon or repair them, raise --max-unavailable to {len(down) + 1}, or leave the cluster out"
    )
