"""Done means the fleet says so: a cluster counts as upgraded only when the versions its agents report (every
kubelet, every API server) are at the target, and a node reporting an older version afterwards is a drift.

Pure rules over the fleet read model and the records; decide/progress.py (a cluster waiting for its
inventory) and decide/world.py (a drift) act on them.
"""

from __future__ import annotations

from flotilla_contracts.v1.common import NodeRole
from flotilla_contracts.v1.upgrade_status import ClusterRolloutState, Direction, NodeStepState
from flotilla_upgrade_orchestrator import fleet as fleet_model
from flotilla_upgrade_orchestrator import skew
from flotilla_upgrade_orchestrator.model import ClusterRec, Rollout

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
