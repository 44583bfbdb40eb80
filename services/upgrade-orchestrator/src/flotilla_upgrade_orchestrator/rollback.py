"""What a rollback can return, and what it must leave, said plainly.

Patch-level rollouts (every cluster stays on its minor) return every upgraded node to its previous
patch, workers first. A minor upgrade cannot take its control plane back (kubeadm does not support
downgrading it): the rollout stops and only workers go back, and only where the skew policy allows the
older kubelet under the new API servers (I3).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flotilla_upgrade_orchestrator import skew
from flotilla_upgrade_orchestrator.model import ClusterRec, NodeRec, Rollout


@dataclass
class RollbackDecision:
    """Nodes to return, per cluster; nodes kept with the reason; one message for people."""

    returns: dict[str, list[str]] = field(default_factory=dict)
    kept: list[tuple[str, str, str]] = field(default_factory=list)  # cluster, node, why
    message: str = ""


def upgraded(node: NodeRec) -> bool:
    """The node's version moved (the upgrade step succeeded), so there is something to return."""
    return node.current_version != "" and node.current_version != node.from_version and not node.rolled_back


def patch_level(rollout: Rollout) -> bool:
    """True when no cluster changes minor in this rollout."""
    target = skew.parse(rollout.spec.target_version)
    for cluster in rollout.clusters.values():
        for node in cluster.nodes:
            start = skew.parse(node.from_version)
            if target is None or start is None or start.minor_version != target.minor_version:
                return False
    return True


def _worker_may_return(cluster: ClusterRec, node: NodeRec) -> str:
    """Empty when the worker's previous kubelet is allowed under the API servers after the rollout; else why."""
    previous = skew.parse(node.from_version)
    apis = [skew.parse(n.current_version or n.from_version) for n in cluster.nodes if n.control_plane]
    known = [a for a in apis if a is not None]
    if previous is None:
        return f"its previous version {node.from_version!r} is unknown"
    for api in known:
        for verdict in skew.kubelet_against_api(previous, api):
            if not verdict.ok:
                return verdict.detail
    return ""


def decide(rollout: Rollout) -> RollbackDecision:
    decision = RollbackDecision()
    patch = patch_level(rollout)
    kept_cp_clusters: list[str] = []
    for cluster in rollout.clusters.values():
        for node in cluster.nodes:
            if not upgraded(node):
                continue
            if node.control_plane and not patch:
                decision.kept.append(
                    (cluster.cluster_id, node.node_id, "a control plane cannot be downgraded across a minor")
                )
                if cluster.cluster_id not in kept_cp_clusters:
                    kept_cp_clusters.append(cluster.cluster_id)
                continue
            why = "" if node.control_plane else _worker_may_return(cluster, node)
            if why:
                decision.kept.append((cluster.cluster_id, node.node_id, why))
                continue
            decision.returns.setdefault(cluster.cluster_id, []).append(node.node_id)
    returning = sum(len(nodes) for nodes in decision.returns.values())
    target = rollout.spec.target_version
    if patch:
        decision.message = (
            f"patch-level rollback: {returning} upgraded node(s) in {len(decision.returns)} cluster(s) return to "
            "their previous patch, workers first; nodes not yet upgraded are given back as they are"
        )
    else:
        decision.message = (
            f"minor upgrade: the control plane cannot be downgraded (kubeadm does not support it), so "
            f"{len(kept_cp_clusters)} cluster(s) keep their control plane at {target}; the rollout stops and "
            f"{returning} upgraded worker(s) return to their previous version"
        )
    others = [k for k in decision.kept if k[2] != "a control plane cannot be downgraded across a minor"]
    if others:
        decision.message += f"; {len(others)} worker(s) stay at {target}: " + "; ".join(
            f"{c}/{n}: {why}" for c, n, why in others[:5]
        )
    return decision
