"""Done means the fleet says so: a cluster counts as upgraded only when the versions its agents report (every
kubelet, every API server) are at the target, and a node reporting an older version afterwards is a drift.

`lagging` and `drifts` are pure (fleet read model and records in, findings out); `hold_until_reported` and
`on_node_facts` apply them through the engine in the caller's transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from flotilla_contracts.v1.agent import NodeFacts, StepKind
from flotilla_contracts.v1.common import NodeRole
from flotilla_contracts.v1.upgrade_status import (
    ClusterRolloutState,
    Direction,
    FreezeReason,
    NodeStepState,
    VersionDriftDetected,
)
from flotilla_runtime.logs import get_logger
from flotilla_runtime.store import SyncTx
from flotilla_upgrade_orchestrator import fleet as fleet_model
from flotilla_upgrade_orchestrator import skew
from flotilla_upgrade_orchestrator.model import ClusterRec, FailureRec, Rollout

if TYPE_CHECKING:
    from flotilla_upgrade_orchestrator.engine import Engine

log = get_logger("flotilla.upgrade-orchestrator.engine")

# Clusters whose nodes all reached the target: a node reporting an older version there has drifted.
_UPGRADED = frozenset({ClusterRolloutState.SOAKING, ClusterRolloutState.SUCCEEDED})


def older(version: str | None, target: str) -> bool:
    seen, want = skew.parse(version), skew.parse(target)
    return seen is not None and want is not None and seen < want


def versions_of(node: fleet_model.FleetNode) -> list[tuple[str, str]]:
    """(component, version) the agents report for a node: its kubelet, and its API server on a control plane."""
    found = [("kubelet", node.kubelet_version)]
    if node.role is NodeRole.CONTROL_PLANE and node.api_server_version:
        found.append(("kube-apiserver", node.api_server_version))
    return found


def lagging(fleet: fleet_model.FleetCluster | None, target: str) -> list[str]:
    """Every reported version of the cluster below the target, as "node kubelet v1.29.6"; empty when none."""
    if fleet is None:
        return []
    return [
        f"{node.node_name} {component} {version}"
        for node in sorted(fleet.nodes.values(), key=lambda n: n.node_name)
        for component, version in versions_of(node)
        if older(version, target)
    ]


def nodes_behind(fleet: fleet_model.FleetCluster | None, target: str) -> set[str]:
    """Ids of the cluster's nodes reporting any version below the target (a retry upgrades them again)."""
    if fleet is None:
        return set()
    return {n.node_id for n in fleet.nodes.values() if any(older(v, target) for _, v in versions_of(n))}


def hold_until_reported(engine: Engine, tx: SyncTx, rollout: Rollout, cluster: ClusterRec, now: datetime) -> bool:
    """True while a cluster whose nodes all finished must wait for its inventory to reach the target.

    The wait is stated in status (`waiting`); past `Timeouts.inventory_s` the cluster fails, naming the nodes
    and versions, which the failure budget then judges like any failed cluster (I7).
    """
    behind = lagging(engine.fleet.get(cluster.cluster_id), cluster.target_version)
    if not behind:
        if cluster.waiting:
            cluster.waiting, cluster.waiting_since = "", None
            engine.touch_cluster(rollout, cluster)
        return False
    shown = ", ".join(behind[:8]) + (f" and {len(behind) - 8} more" if len(behind) > 8 else "")
    since = cluster.waiting_since if cluster.waiting_since is not None else now.timestamp()
    waited = now.timestamp() - since
    if waited > engine.timeouts.inventory_s:
        cluster.failure = (
            f"every node finished its steps but after {round(waited)} s the fleet still reports {shown}, "
            f"not {cluster.target_version}; `retry` upgrades the cluster again once its nodes are looked at"
        )
        cluster.waiting, cluster.waiting_since = "", None
        engine.record_failure(
            rollout,
            FailureRec(
                cluster_id=cluster.cluster_id,
                reason="InventoryNotAtTarget",
                message=cluster.failure,
                at=now.timestamp(),
            ),
        )
        _fail_lagging_nodes(engine, tx, rollout, cluster, now)
        engine.cluster_to(
            tx, rollout, cluster, ClusterRolloutState.FAILED, now, "InventoryNotAtTarget", cluster.failure
        )
        return False
    waiting = f"waiting for the fleet to report {cluster.target_version}: {shown}"
    if cluster.waiting != waiting or cluster.waiting_since is None:
        cluster.waiting, cluster.waiting_since = waiting, since
        engine.touch_cluster(rollout, cluster)
    return True


def _fail_lagging_nodes(engine: Engine, tx: SyncTx, rollout: Rollout, cluster: ClusterRec, now: datetime) -> None:
    """The nodes still reporting an older version are failed (not upgraded as far as the fleet says), so a
    `retry` gives them a new attempt: upgraded again, from Pending."""
    behind = nodes_behind(engine.fleet.get(cluster.cluster_id), cluster.target_version)
    for node in cluster.nodes:
        if node.node_id not in behind or node.state is NodeStepState.FAILED or node.in_flight is not None:
            continue
        message = f"the fleet reports it below {cluster.target_version} after its steps finished"
        node.verified, node.failed_step, node.resume_state = False, StepKind.VERIFY, node.state
        node.failure = f"verify InventoryNotAtTarget: {message}"
        engine.node_to(
            tx, rollout, cluster, node, NodeStepState.FAILED, now, step=StepKind.VERIFY,
            reason="InventoryNotAtTarget", message=message,
        )  # fmt: skip


def note_verified(engine: Engine, cluster_id: str, node_id: str, kubelet: str) -> None:
    """The agent's verify report is the node's kubelet as it reports it: the read model takes it at once."""
    node = engine.fleet.get(cluster_id, fleet_model.FleetCluster(cluster_id=cluster_id)).nodes.get(node_id)
    if node is not None and node.kubelet_version != kubelet:
        node.kubelet_version = kubelet
        engine.dirty_fleet.add(cluster_id)


def drifts(
    rollout: Rollout, cluster: ClusterRec, node: fleet_model.FleetNode, moved: set[str]
) -> list[tuple[str, str]]:
    """(component, version) of `node` that moved (`moved`: the components whose version just changed) below
    the rollout's target in a cluster the rollout brought to it; empty when nothing drifted."""
    if cluster.state not in _UPGRADED:
        return []
    ours = next((n for n in cluster.nodes if n.node_id == node.node_id), None)
    if ours is not None and (ours.direction is not Direction.FORWARD or ours.state is NodeStepState.FAILED):
        return []
    return [(c, v) for c, v in versions_of(node) if c in moved and older(v, cluster.target_version)]


def on_node_facts(
    engine: Engine, tx: SyncTx, cluster_id: str, facts: NodeFacts, changed: list[str] | None, now: datetime
) -> list[Rollout]:
    """Inventory for one node; a drift is announced, kept in the rollout's failures (status) and freezes a
    rollout still running (I7). Returns the rollouts with this cluster, to advance."""
    before = engine.fleet.get(cluster_id, fleet_model.FleetCluster(cluster_id=cluster_id)).nodes.get(facts.node_id)
    fleet_model.apply_node(engine.fleet, cluster_id, facts, changed)
    engine.dirty_fleet.add(cluster_id)
    node = engine.fleet[cluster_id].nodes[facts.node_id]
    moved = {
        component
        for component, version in versions_of(node)
        if before is None or dict(versions_of(before)).get(component) != version
    }
    found = []
    for rollout in engine.rollouts.values():
        cluster = rollout.clusters.get(cluster_id)
        if cluster is None:
            continue
        found.append(rollout)
        for component, version in drifts(rollout, cluster, node, moved):
            _drifted(engine, tx, rollout, cluster, node, component, version, now)
    return found


def _drifted(
    engine: Engine,
    tx: SyncTx,
    rollout: Rollout,
    cluster: ClusterRec,
    node: fleet_model.FleetNode,
    component: str,
    version: str,
    now: datetime,
) -> None:
    message = (
        f"{node.node_name} in {cluster.cluster_id} reports {component} {version} after the rollout brought the "
        f"cluster to {cluster.target_version}"
    )
    engine.emit(
        tx,
        VersionDriftDetected(
            rollout_id=rollout.rollout_id,
            cluster_id=cluster.cluster_id,
            node_id=node.node_id,
            node_name=node.node_name,
            component=component,
            reported_version=version,
            target_version=cluster.target_version,
            message=message,
            occurred_at=now,
        ),
        rollout_id=rollout.rollout_id,
    )
    engine.record_failure(
        rollout,
        FailureRec(
            cluster_id=cluster.cluster_id,
            node_id=node.node_id,
            reason="VersionDrift",
            message=message,
            at=now.timestamp(),
        ),
    )
    engine.touch(rollout, now)
    log.bind(rollout=rollout.rollout_id, cluster=cluster.cluster_id, node=node.node_id).warning(
        "version drift: %s", message
    )
    if not rollout.final:
        engine.freeze(
            tx, rollout, FreezeReason.VERSION_DRIFT, message, now, cluster_id=cluster.cluster_id, node_id=node.node_id
        )
