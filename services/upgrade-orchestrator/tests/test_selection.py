"""Wave and concurrency selection over generated fleets: I1 (budget, concurrency) and I2 (control plane first)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from flotilla_contracts.v1.agent import KubeadmAction, StepKind
from flotilla_contracts.v1.common import NodeRole
from flotilla_contracts.v1.heartbeat import ClusterHealth, NodeHealth
from flotilla_contracts.v1.registration import ClusterState
from flotilla_contracts.v1.upgrade import RolloutSpec, WavesSpec
from flotilla_contracts.v1.upgrade_status import ClusterRolloutState, NodeStepState
from flotilla_upgrade_orchestrator import scheduling
from flotilla_upgrade_orchestrator.fleet import FleetCluster, FleetNode
from flotilla_upgrade_orchestrator.model import ClusterRec, NodeRec, Rollout, RolloutRec, WaveRec
from flotilla_upgrade_orchestrator.plan import build_plan
from flotilla_upgrade_orchestrator.releases import Releases
from flotilla_upgrade_orchestrator.spec import check_spec

# --- plans over generated fleets ---------------------------------------------------------------------------


@st.composite
def fleets(draw: st.DrawFn) -> dict[str, FleetCluster]:
    fleet = {}
    for i in range(draw(st.integers(0, 12))):
        cid = f"c{i:02d}"
        cps = draw(st.integers(1, 3))
        workers = draw(st.integers(0, 4))
        minor = draw(st.sampled_from([29, 30]))
        nodes = {}
        for j in range(cps + workers):
            role = NodeRole.CONTROL_PLANE if j < cps else NodeRole.WORKER
            patch = draw(st.integers(0, 4))
            nodes[f"{cid}-n{j}"] = FleetNode(
                node_id=f"{cid}-n{j}", node_name=f"{cid}-n{j}", role=role, kubelet_version=f"v1.{minor}.{patch}"
            )
        fleet[cid] = FleetCluster(
            cluster_id=cid,
            name=cid,
            state=ClusterState.APPROVED,
            labels={"tier": draw(st.sampled_from(["a", "b"]))},
            nodes=nodes,
        )
    return fleet


@settings(max_examples=150, deadline=None)
@given(fleets(), st.integers(0, 3), st.lists(st.integers(1, 100), max_size=4, unique=True), st.integers(1, 4))
def test_waves_partition_the_clusters_with_control_plane_first(
    fleet: dict[str, FleetCluster], canary: int, raw_pct: list[int], concurrent: int
) -> None:
    pct = sorted(raw_pct)
    if pct and pct[-1] != 100:
        pct.append(100)
    spec = RolloutSpec(
        target_version="v1.30.5",
        waves=WavesSpec(canary_clusters=canary, percentages=pct),
        max_concurrent_clusters=concurrent,
    )
    plan = build_plan(check_spec(spec, Releases()), fleet, {})
    placed = [c.cluster_id for w in plan.waves for c in w.clusters]
    assert len(placed) == len(set(placed)) == plan.clusters_total
    refused = {r.cluster_id for r in plan.refusals if r.cluster_id is not None}
    assert set(placed) | set(plan.up_to_date) | refused == set(fleet)
    if canary and placed:
        assert len(plan.waves[0].clusters) == min(canary, len(placed))
    done = min(canary, len(placed))
    for wave, p in zip(plan.waves[1 if canary else 0 :], pct, strict=False):
        done = max(done, -(-len(placed) * p // 100))  # cumulative share after this wave
        assert sum(len(w.clusters) for w in plan.waves[: wave.index + 1]) == done
    assert len(plan.waves) == (1 if canary else 0) + (len(pct) or 1)
    for wave in plan.waves:
        for cluster in wave.clusters:
            nodes = [*cluster.control_plane, *cluster.workers]
            assert [n.order for n in nodes] == list(range(len(nodes)))
            assert all(n.role is NodeRole.CONTROL_PLANE for n in cluster.control_plane)
            applies = [n for n in cluster.control_plane if n.kubeadm_action is KubeadmAction.APPLY]
            assert len(applies) <= 1 and (not applies or applies[0] is cluster.control_plane[0])
            assert all(n.kubeadm_action is KubeadmAction.NODE for n in cluster.workers)


# --- node steps in one cluster ------------------------------------------------------------------------------

_STATES = [
    NodeStepState.PENDING,
    NodeStepState.CORDONED,
    NodeStepState.DRAINED,
    NodeStepState.UPGRADED,
    NodeStepState.VERIFIED,
    NodeStepState.UNCORDONED,
]


@st.composite
def nodes(draw: st.DrawFn, order: int, role: NodeRole) -> NodeRec:
    state = draw(st.sampled_from(_STATES))
    index = _STATES.index(state)
    node = NodeRec(
        node_id=f"n{order}", node_name=f"n{order}", role=role, order=order, from_version="v1.29.6", state=state
    )
    node.cordoned_by_us = 1 <= index <= 4
    node.drained = 2 <= index <= 4
    node.verified = index >= 4
    if draw(st.booleans()) and state is not NodeStepState.UNCORDONED:
        node.in_flight = scheduling.next_step(node)
    return node


@st.composite
def cluster_cases(draw: st.DrawFn) -> tuple[ClusterRec, dict[str, FleetNode], int]:
    cps = draw(st.integers(0, 3))
    workers = draw(st.integers(0, 6))
    recs = [draw(nodes(i, NodeRole.CONTROL_PLANE if i < cps else NodeRole.WORKER)) for i in range(cps + workers)]
    # The scheduler never let two control-plane nodes be in progress at once, nor a worker before them (I2).
    for n in recs[1:cps]:
        started = n.state is not NodeStepState.PENDING or n.in_flight is not None
        if started and not all(p.succeeded for p in recs[: n.order]):
            n.state, n.cordoned_by_us, n.drained, n.verified, n.in_flight = (
                NodeStepState.PENDING,
                False,
                False,
                False,
                None,
            )
    if not all(n.succeeded for n in recs[:cps]):
        for n in recs[cps:]:
            n.state, n.cordoned_by_us, n.drained, n.verified, n.in_flight = (
                NodeStepState.PENDING,
                False,
                False,
                False,
                None,
            )
    fleet = {
        n.node_id: FleetNode(
            node_id=n.node_id,
            node_name=n.node_name,
            role=n.role,
            kubelet_version="v1.29.6",
            health=draw(st.sampled_from([NodeHealth.READY] * 4 + [NodeHealth.NOT_READY])),
            unschedulable=draw(st.booleans()) and draw(st.booleans()),
        )
        for n in recs
    }
    state = ClusterRolloutState.UPGRADING_CONTROL_PLANE
    cluster = ClusterRec(
        cluster_id="c", wave=0, order=0, from_version="v1.29.6", target_version="v1.30.4", state=state, nodes=recs
    )
    return cluster, fleet, draw(st.integers(1, 4))


@settings(max_examples=300, deadline=None)
@given(cluster_cases(), st.booleans(), st.booleans())
def test_node_steps_hold_the_budget_and_control_plane_first(
    case: tuple[ClusterRec, dict[str, FleetNode], int], may_start: bool, may_continue: bool
) -> None:
    cluster, fleet, max_unavailable = case
    before = scheduling.unavailable(cluster, fleet)
    chosen = scheduling.cluster_steps(cluster, fleet, scheduling.Limits(max_unavailable, may_start, may_continue))
    cordons = [n for n, step in chosen if step is StepKind.CORDON]
    # I1: new cordons only while the count, including nodes already down, stays within the budget.
    assert len(before | {n.node_id for n in cordons}) <= max(max_unavailable, len(before))
    if len(before) >= max_unavailable:
        assert all(n.node_id in before for n in cordons)
    # I4: one step per node, only the one after its state, none while one is in flight.
    assert len({n.node_id for n, _ in chosen}) == len(chosen)
    assert all(n.in_flight is None and scheduling.next_step(n) is step for n, step in chosen)
    # I7: nothing new while not allowed.
    if not may_start:
        assert not cordons
    if not may_continue:
        assert not [s for _, s in chosen if s in (StepKind.DRAIN, StepKind.UPGRADE)]
    # I2: workers wait for every control-plane node; control-plane nodes one at a time.
    cps = [n for n in cluster.nodes if n.control_plane]
    if any(not n.succeeded for n in cps):
        assert all(n.control_plane for n in cordons)
    cp_busy = [n for n in cps if n.cordoned_by_us or n.in_flight] + [n for n in cordons if n.control_plane]
    assert len({n.node_id for n in cp_busy}) <= 1 or not [n for n in cordons if n.control_plane]


# --- clusters in a rollout -------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(list(ClusterRolloutState)), min_size=1, max_size=12),
    st.integers(1, 4),
    st.lists(st.booleans(), min_size=12, max_size=12),
)
def test_cluster_starts_never_exceed_max_concurrent_clusters(
    states: list[ClusterRolloutState], limit: int, reachable: list[bool]
) -> None:
    spec = RolloutSpec(target_version="v1.30.4", max_concurrent_clusters=limit)
    rec = RolloutRec(rollout_id="r", spec=spec, created_at=0, updated_at=0, waves=[WaveRec(index=0)])
    from flotilla_contracts.v1.upgrade import UpgradePlan

    rollout = Rollout(rec=rec, plan=UpgradePlan(target_version="v1.30.4", feasible=True))
    for i, state in enumerate(states):
        rollout.clusters[f"c{i}"] = ClusterRec(
            cluster_id=f"c{i}", wave=0, order=i, from_version="v1.29.6", target_version="v1.30.4", state=state
        )
    busy = sum(1 for c in rollout.clusters.values() if scheduling.holds_slot(c))
    starts = scheduling.clusters_to_start(
        rollout,
        lambda c: True,
        lambda cid: ClusterHealth.READY if reachable[int(cid[1:])] else ClusterHealth.UNREACHABLE,
    )
    assert busy + len(starts) <= max(limit, busy)
    assert all(c.state in (ClusterRolloutState.PENDING, ClusterRolloutState.WAITING_WINDOW) for c in starts)
    assert all(reachable[int(c.cluster_id[1:])] for c in starts)
