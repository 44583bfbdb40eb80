"""The dry run: which clusters and nodes move, in which waves and order, with skew checks and refusals.

Pure: a checked spec, the fleet read model and the clusters busy in other rollouts in; an UpgradePlan out.
Per cluster: control-plane nodes first, one at a time (`kubeadm upgrade apply` on the first, `kubeadm
upgrade node` on the rest), then workers (I2). A cluster is refused with its reason when moving it would
break the skew policy (I3), when it is Unreachable, not approved, of unknown version or in another rollout.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

from flotilla_contracts.errors import ErrorCode
from flotilla_contracts.v1.agent import KubeadmAction, StepKind
from flotilla_contracts.v1.common import NodeRole
from flotilla_contracts.v1.heartbeat import ClusterHealth
from flotilla_contracts.v1.registration import ClusterState
from flotilla_contracts.v1.upgrade import (
    PlannedCluster,
    PlannedNode,
    PlannedWave,
    Refusal,
    RefusalReason,
    SkewCheck,
    SkewRule,
    UpgradePlan,
)
from flotilla_kube.versions import KubeVersion
from flotilla_upgrade_orchestrator import skew, stall
from flotilla_upgrade_orchestrator.fleet import FleetCluster, FleetNode
from flotilla_upgrade_orchestrator.spec import CheckedSpec
from flotilla_upgrade_orchestrator.waves import makespan, split_waves

FORWARD_STEPS = [StepKind.CORDON, StepKind.DRAIN, StepKind.UPGRADE, StepKind.VERIFY, StepKind.UNCORDON]
# Refusals that stop `upgrade.start`; the others (Unreachable, not approved) only leave a cluster out.
BLOCKING = frozenset(
    {
        RefusalReason.SKIPS_MINOR,
        RefusalReason.KUBELET_TOO_OLD,
        RefusalReason.DOWNGRADE,
        RefusalReason.UNKNOWN_VERSION,
        RefusalReason.IN_ANOTHER_ROLLOUT,
        RefusalReason.INVALID_SPEC,
        RefusalReason.KUBE_PROXY_SKEW,
        RefusalReason.BUDGET_HELD,
    }
)
ERROR_FOR_REFUSAL: dict[RefusalReason, ErrorCode] = {
    RefusalReason.SKIPS_MINOR: ErrorCode.SKEW_VIOLATION,
    RefusalReason.KUBELET_TOO_OLD: ErrorCode.SKEW_VIOLATION,
    RefusalReason.DOWNGRADE: ErrorCode.SKEW_VIOLATION,
    RefusalReason.UNKNOWN_VERSION: ErrorCode.UNKNOWN_VERSION,
    RefusalReason.IN_ANOTHER_ROLLOUT: ErrorCode.ROLLOUT_CONFLICT,
    RefusalReason.INVALID_SPEC: ErrorCode.INVALID_PLAN,
    RefusalReason.BUDGET_HELD: ErrorCode.INVALID_PLAN,
    RefusalReason.KUBE_PROXY_SKEW: ErrorCode.SKEW_VIOLATION,
}


@dataclass(frozen=True)
class Estimates:
    """Seconds each step is expected to take, for the plan's estimate only."""

    cordon_s: float = 5.0
    drain_s: float = 60.0
    upgrade_s: float = 180.0
    verify_s: float = 30.0
    uncordon_s: float = 5.0

    def node_s(self, drain_timeout_s: float) -> float:
        return self.cordon_s + min(self.drain_s, drain_timeout_s) + self.upgrade_s + self.verify_s + self.uncordon_s


def _planned(node: FleetNode, order: int, action: KubeadmAction | None) -> PlannedNode:
    return PlannedNode(
        node_id=node.node_id,
        node_name=node.node_name,
        role=node.role,
        order=order,
        from_version=node.kubelet_version,
        kubeadm_action=action,
        steps=list(FORWARD_STEPS),
    )


def _by_name(nodes: list[FleetNode]) -> list[FleetNode]:
    return sorted(nodes, key=lambda n: (n.node_name, n.node_id))


@dataclass(frozen=True)
class ClusterVerdict:
    """One cluster judged: planned (or None), refusals, up to date."""

    planned: PlannedCluster | None
    refusals: list[Refusal]
    up_to_date: bool = False


def judge_cluster(
    cluster: FleetCluster,
    target: KubeVersion,
    target_text: str,
    busy_in: str | None,
    drain_timeout_s: float,
    max_unavailable: int,
    estimates: Estimates,
) -> ClusterVerdict:
    """Plan one member cluster or refuse it with the reason."""
    cid = cluster.cluster_id

    def refuse(reason: RefusalReason, message: str, node_id: str | None = None) -> ClusterVerdict:
        return ClusterVerdict(None, [Refusal(reason=reason, cluster_id=cid, node_id=node_id, message=message)])

    if busy_in is not None:
        return refuse(RefusalReason.IN_ANOTHER_ROLLOUT, f"cluster {cid} is already in active rollout {busy_in}")
    if cluster.health is ClusterHealth.UNREACHABLE:
        return refuse(
            RefusalReason.CLUSTER_UNREACHABLE, f"cluster {cid} is Unreachable: no node heard within the grace"
        )
    if not cluster.nodes:
        return refuse(RefusalReason.UNKNOWN_VERSION, f"cluster {cid} has no nodes in the inventory: versions unknown")
    versions: dict[str, KubeVersion] = {}
    for node in cluster.nodes.values():
        parsed = skew.parse(node.kubelet_version)
        if parsed is None:
            return refuse(
                RefusalReason.UNKNOWN_VERSION,
                f"node {node.node_name} reports kubelet version {node.kubelet_version!r}, unknown to the fleet",
                node.node_id,
            )
        versions[node.node_id] = parsed
    cps = [n for n in cluster.nodes.values() if n.role is NodeRole.CONTROL_PLANE]
    workers = [n for n in cluster.nodes.values() if n.role is not NodeRole.CONTROL_PLANE]
    verdicts = skew.cluster_upgrade([versions[n.node_id] for n in cps], [versions[n.node_id] for n in workers], target)
    for node in _by_name(list(cluster.nodes.values())):
        if node.kube_proxy_version is None:
            continue  # not reported: nothing to check
        proxy = skew.parse(node.kube_proxy_version)
        if proxy is None:
            return refuse(
                RefusalReason.UNKNOWN_VERSION,
                f"node {node.node_name} reports kube-proxy version {node.kube_proxy_version!r}, unknown to the fleet",
                node.node_id,
            )
        after = max(versions[node.node_id], target)  # its kubelet once the cluster is at the target
        verdicts += [
            dataclasses.replace(v, detail=f"node {node.node_name}: {v.detail}")
            for v in skew.kube_proxy_against(proxy, target, after)
        ]
    checks = [SkewCheck(rule=v.rule, cluster_id=cid, ok=v.ok, detail=v.detail) for v in verdicts]
    for node in cluster.nodes.values():
        if versions[node.node_id] > target:
            checks.append(
                SkewCheck(
                    rule=SkewRule.NO_DOWNGRADE,
                    cluster_id=cid,
                    node_id=node.node_id,
                    ok=False,
                    detail=f"node {node.node_name} at {versions[node.node_id]} is newer than {target}",
                )
            )
    refusals = [
        Refusal(reason=v.refusal, cluster_id=cid, message=f"cluster {cid}: {v.detail}")
        for v in verdicts
        if not v.ok and v.refusal is not None
    ]
    refusals += [
        Refusal(reason=RefusalReason.DOWNGRADE, cluster_id=cid, node_id=c.node_id, message=c.detail)
        for c in checks
        if c.node_id is not None and not c.ok
    ]
    if refusals:
        return ClusterVerdict(None, _unique(refusals))
    moving_cps = _by_name([n for n in cps if versions[n.node_id] < target])
    moving_workers = _by_name([n for n in workers if versions[n.node_id] < target])
    if not moving_cps and not moving_workers:
        return ClusterVerdict(None, [], up_to_date=True)
    blocked = stall.budget_blocked(cluster, [n.node_id for n in (*moving_cps, *moving_workers)], max_unavailable)
    if blocked is not None:
        return refuse(RefusalReason.BUDGET_HELD, blocked)
    applied = any(versions[n.node_id] == target for n in cps)
    planned_cps = [
        _planned(n, i, KubeadmAction.NODE if applied or i > 0 else KubeadmAction.APPLY)
        for i, n in enumerate(moving_cps)
    ]
    planned_workers = [_planned(n, len(planned_cps) + i, KubeadmAction.NODE) for i, n in enumerate(moving_workers)]
    per_node = estimates.node_s(drain_timeout_s)
    duration = per_node * (len(planned_cps) + math.ceil(len(planned_workers) / max(1, max_unavailable)))
    oldest_cp = min((versions[n.node_id] for n in cps), default=target)
    planned = PlannedCluster(
        cluster_id=cid,
        name=cluster.name,
        from_version=str(oldest_cp) if cps else min(versions.values()).__str__(),
        target_version=target_text,
        control_plane=planned_cps,
        workers=planned_workers,
        skew_checks=checks,
        estimated_duration_s=duration,
    )
    return ClusterVerdict(planned, [])


def _unique(refusals: list[Refusal]) -> list[Refusal]:
    seen: set[tuple[str, str | None, str]] = set()
    out = []
    for refusal in refusals:
        key = (refusal.reason.value, refusal.node_id, refusal.message)
        if key not in seen:
            seen.add(key)
            out.append(refusal)
    return out


def build_plan(
    checked: CheckedSpec,
    fleet: Mapping[str, FleetCluster],
    busy: Mapping[str, str],
    estimates: Estimates = Estimates(),
) -> UpgradePlan:
    """The whole plan; `busy` maps clusters in other active rollouts to their rollout id."""
    spec = checked.spec
    refusals: list[Refusal] = []
    up_to_date: list[str] = []
    chosen: list[tuple[PlannedCluster, Mapping[str, str]]] = []
    members = sorted(fleet.values(), key=lambda c: (c.name, c.cluster_id))
    matched = 0
    for cluster in members:
        if not checked.selector.matches(cluster.labels):
            continue
        if cluster.state is ClusterState.PENDING:
            refusals.append(
                Refusal(
                    reason=RefusalReason.CLUSTER_NOT_APPROVED,
                    cluster_id=cluster.cluster_id,
                    message=f"cluster {cluster.cluster_id} is Pending approval; approve it to include it",
                )
            )
            continue
        if not cluster.member:
            continue
        matched += 1
        verdict = judge_cluster(
            cluster,
            checked.target,
            spec.target_version,
            busy.get(cluster.cluster_id),
            spec.drain.timeout_s,
            spec.max_unavailable,
            estimates,
        )
        refusals += verdict.refusals
        if verdict.up_to_date:
            up_to_date.append(cluster.cluster_id)
        if verdict.planned is not None:
            chosen.append((verdict.planned, cluster.labels))
    if matched == 0:
        refusals.append(
            Refusal(
                reason=RefusalReason.INVALID_SPEC,
                message=f"no member cluster matches the selector {spec.selector!r}"
                if spec.selector
                else "the fleet has no member cluster",
            )
        )
    split, left_out = split_waves(checked, chosen)
    refusals += left_out
    approvals = set(spec.approval_before_waves)
    waves = []
    for index, (name, clusters) in enumerate(split):
        span = makespan([c.estimated_duration_s for c in clusters], spec.max_concurrent_clusters) if clusters else 0.0
        waves.append(
            PlannedWave(
                index=index,
                name=name,
                clusters=clusters,
                requires_approval=index in approvals,
                estimated_duration_s=span + (spec.soak_s if clusters else 0.0),
            )
        )
    staged = {c.cluster_id for _, cs in split for c in cs}
    moving = [c for c, _ in chosen if c.cluster_id in staged]
    blocking = any(r.reason in BLOCKING for r in refusals)
    warnings = [pre_release_warning(checked.target)] if checked.target.is_pre_release else []
    return UpgradePlan(
        target_version=spec.target_version,
        feasible=bool(moving) and not blocking,
        waves=waves,
        refusals=refusals,
        up_to_date=up_to_date,
        clusters_total=len(moving),
        nodes_total=sum(len(c.control_plane) + len(c.workers) for c in moving),
        estimated_duration_s=sum(w.estimated_duration_s for w in waves),
        warnings=warnings,
    )


def pre_release_warning(target: KubeVersion) -> str:
    """What the plan says about a pre-release target (allowed by the spec's allow_pre_release)."""
    flag = "--allow-release-candidate-upgrades" if target.is_release_candidate else "--allow-experimental-upgrades"
    return (
        f"{target} is a pre-release ({target.pre}), allowed by allow_pre_release: not for production; "
        f"`kubeadm upgrade apply` runs with {flag}, and {target.release} (GA) is a later upgrade"
    )


def start_refusal(plan: UpgradePlan) -> tuple[ErrorCode, str] | None:
    """Why `upgrade.start` must refuse this plan, or None when it may start."""
    for refusal in plan.refusals:
        if refusal.reason in BLOCKING:
            extra = len([r for r in plan.refusals if r.reason in BLOCKING]) - 1
            more = f" (and {extra} more refusal(s); see `upgrade plan`)" if extra else ""
            return ERROR_FOR_REFUSAL[refusal.reason], refusal.message + more
    if plan.clusters_total == 0:
        reason = f"{len(plan.up_to_date)} cluster(s) already at {plan.target_version}" if plan.up_to_date else ""
        left = f"{len(plan.refusals)} refused" if plan.refusals else ""
        detail = ", ".join(part for part in (reason, left) if part) or "no cluster selected"
        return ErrorCode.INVALID_PLAN, f"nothing would move: {detail}"
    return None
