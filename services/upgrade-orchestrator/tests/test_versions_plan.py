"""Versions as Kubernetes means them, in the planner: pre-release targets need allow_pre_release and the plan
says so, an RC cluster upgrades to GA, kube-proxy's skew is checked where the inventory reports it."""

from __future__ import annotations

import pytest
from orchestrator_harness import Sim

from flotilla_contracts.errors import ErrorCode
from flotilla_contracts.v1.common import NodeRole
from flotilla_contracts.v1.registration import ClusterState
from flotilla_contracts.v1.upgrade import RefusalReason, RolloutSpec, SkewRule
from flotilla_contracts.v1.upgrade_status import RolloutState
from flotilla_kube.versions import parse_version
from flotilla_upgrade_orchestrator import skew
from flotilla_upgrade_orchestrator.fleet import FleetCluster, FleetNode
from flotilla_upgrade_orchestrator.plan import build_plan, start_refusal
from flotilla_upgrade_orchestrator.releases import Releases
from flotilla_upgrade_orchestrator.spec import SpecError, check_spec

v = parse_version


def cluster(
    cid: str, cp: str, workers: list[str], proxies: dict[int, str | None] | None = None
) -> dict[str, FleetCluster]:
    nodes = {}
    for i, version in enumerate([cp, *workers]):
        nid = f"{cid}-n{i}"
        nodes[nid] = FleetNode(
            node_id=nid,
            node_name=nid,
            role=NodeRole.CONTROL_PLANE if i == 0 else NodeRole.WORKER,
            kubelet_version=version,
            kube_proxy_version=(proxies or {}).get(i),
        )
    return {cid: FleetCluster(cluster_id=cid, name=cid, state=ClusterState.APPROVED, nodes=nodes)}


# --- the release table ----------------------------------------------------------------------------------------


def test_pre_releases_of_a_known_or_the_next_minor_are_known() -> None:
    releases = Releases()  # newest line known: 1.37
    assert releases.next_minor == (1, 38)
    assert releases.known(v("v1.38.0-rc.1")) and releases.known(v("v1.38.0-alpha.0"))
    assert releases.known(v("v1.31.0-rc.1"))  # a known line's RC (before its GA)
    assert not releases.known(v("v1.39.0-rc.1"))  # two lines ahead
    assert not releases.known(v("v1.37.3-rc.0"))  # a patch's rc tag is not a release
    assert "pre-release" in releases.why_unknown(v("v1.39.0-rc.1"))
    assert "v1.38" in releases.why_unknown(v("v1.39.0-rc.1"))
    assert Releases.with_extra(["v1.39.0-beta.1"]).known(v("v1.39.0-beta.1"))
    assert not Releases.with_extra(["v1.39.0-beta.1"]).known(v("v1.39.0-beta.2"))
    assert not releases.known(v("v1.38.0"))  # the GA of the next line is not known until declared


# --- the flag -------------------------------------------------------------------------------------------------


def test_a_pre_release_target_is_refused_without_the_flag() -> None:
    with pytest.raises(SpecError) as caught:
        check_spec(RolloutSpec(target_version="v1.38.0-rc.1"), Releases())
    assert caught.value.code is ErrorCode.PRE_RELEASE_NOT_ALLOWED
    assert caught.value.field == "allow_pre_release"
    assert "--allow-pre-release" in caught.value.message
    # An unknown pre-release says unknown, flag or not.
    with pytest.raises(SpecError) as unknown:
        check_spec(RolloutSpec(target_version="v1.39.0-rc.1", allow_pre_release=True), Releases())
    assert unknown.value.code is ErrorCode.UNKNOWN_VERSION


def test_with_the_flag_the_plan_warns_and_names_the_kubeadm_flag() -> None:
    fleet = cluster("c0", "v1.37.2", ["v1.37.2"])
    rc_spec = check_spec(RolloutSpec(target_version="v1.38.0-rc.1", allow_pre_release=True), Releases())
    rc = build_plan(rc_spec, fleet, {})
    assert rc.feasible and rc.clusters_total == 1
    assert len(rc.warnings) == 1 and "pre-release" in rc.warnings[0]
    assert "--allow-release-candidate-upgrades" in rc.warnings[0]
    beta = check_spec(RolloutSpec(target_version="v1.38.0-beta.0", allow_pre_release=True), Releases())
    assert "--allow-experimental-upgrades" in build_plan(beta, fleet, {}).warnings[0]
    ga = build_plan(check_spec(RolloutSpec(target_version="v1.37.2"), Releases()), cluster("c0", "v1.36.3", []), {})
    assert ga.warnings == []


# --- RC clusters to GA ----------------------------------------------------------------------------------------


def test_a_cluster_at_an_rc_is_planned_to_its_ga() -> None:
    fleet = cluster("c0", "v1.31.0-rc.1", ["v1.31.0-rc.1", "v1.31.0"])
    plan = build_plan(check_spec(RolloutSpec(target_version="v1.31.0"), Releases()), fleet, {})
    assert plan.feasible and plan.up_to_date == [] and start_refusal(plan) is None
    planned = plan.waves[0].clusters[0]
    assert [n.node_id for n in planned.control_plane] == ["c0-n0"]
    assert [n.node_id for n in planned.workers] == ["c0-n1"]  # n2 is already at GA
    assert planned.from_version == "v1.31.0-rc.1"


def test_ga_to_its_own_rc_is_a_downgrade() -> None:
    fleet = cluster("c0", "v1.31.0", ["v1.31.0"])
    spec = RolloutSpec(target_version="v1.31.0-rc.1", allow_pre_release=True)
    plan = build_plan(check_spec(spec, Releases()), fleet, {})
    assert not plan.feasible
    assert {r.reason for r in plan.refusals} == {RefusalReason.DOWNGRADE}


def test_build_metadata_counts_as_the_same_version() -> None:
    fleet = cluster("c0", "v1.31.0+k3s1", ["v1.31.0"])
    plan = build_plan(check_spec(RolloutSpec(target_version="v1.31.0"), Releases()), fleet, {})
    assert plan.up_to_date == ["c0"] and plan.clusters_total == 0


def test_an_rc_cluster_rolls_out_to_ga(sim: Sim) -> None:
    sim.add_cluster("c0", cps=2, workers=2, version="v1.31.0-rc.1")
    rid = sim.start(RolloutSpec(target_version="v1.31.0"))
    sim.run()
    rollout = sim.engine.rollouts[rid]
    assert rollout.state is RolloutState.SUCCEEDED, rollout.rec.message
    assert all(n.version == "v1.31.0" and not n.cordoned_by for n in sim.nodes.values())


# --- kube-proxy -----------------------------------------------------------------------------------------------


def refusals(verdicts: list[skew.Verdict]) -> set[RefusalReason]:
    return {x.refusal for x in verdicts if not x.ok and x.refusal is not None}


def test_kube_proxy_policy_examples() -> None:
    """kubernetes.io/releases/version-skew-policy, kube-proxy: not newer than the API server, up to three minors
    older (two for kube-proxy < 1.25), and within as many of its kubelet."""
    api = v("v1.30.0")
    assert refusals(skew.kube_proxy_against(v("v1.30.0"), api, api)) == set()
    assert refusals(skew.kube_proxy_against(v("v1.27.9"), api, api)) == set()  # three older
    assert refusals(skew.kube_proxy_against(v("v1.26.0"), api, api)) == {RefusalReason.KUBE_PROXY_SKEW}
    assert refusals(skew.kube_proxy_against(v("v1.31.0"), api, api)) == {RefusalReason.KUBE_PROXY_SKEW}
    assert refusals(skew.kube_proxy_against(v("v1.22.0"), v("v1.24.0"), v("v1.24.0"))) == set()  # two, < 1.25
    assert refusals(skew.kube_proxy_against(v("v1.22.0"), v("v1.25.0"), v("v1.25.0"))) == {
        RefusalReason.KUBE_PROXY_SKEW
    }
    assert refusals(skew.kube_proxy_against(v("v1.30.0"), api, v("v1.26.0"))) == {RefusalReason.KUBE_PROXY_SKEW}
    assert refusals(skew.kube_proxy_against(v("v1.31.0-rc.1"), v("v1.31.0"), v("v1.31.0"))) == set()
    failed = [x.rule for x in skew.kube_proxy_against(v("v1.31.0"), api, api) if not x.ok]
    assert failed == [SkewRule.KUBE_PROXY_NOT_NEWER_THAN_API_SERVER]


def test_the_plan_checks_kube_proxy_where_it_is_reported() -> None:
    spec = check_spec(RolloutSpec(target_version="v1.30.4"), Releases())
    fine = build_plan(spec, cluster("c0", "v1.29.6", ["v1.29.6"], {0: "v1.29.6", 1: None}), {})
    assert fine.feasible
    proxies = [c for c in fine.waves[0].clusters[0].skew_checks if c.rule is SkewRule.KUBE_PROXY_MAX_MINOR_LAG]
    assert len(proxies) == 1 and proxies[0].ok and "c0-n0" in proxies[0].detail  # only where reported
    old = build_plan(spec, cluster("c0", "v1.29.6", ["v1.29.6"], {1: "v1.26.1"}), {})
    assert not old.feasible
    refusal = next(r for r in old.refusals if r.reason is RefusalReason.KUBE_PROXY_SKEW)
    assert "c0-n1" in refusal.message and "v1.26.1" in refusal.message
    assert start_refusal(old) is not None and start_refusal(old)[0] is ErrorCode.SKEW_VIOLATION  # type: ignore[index]
    newer = build_plan(spec, cluster("c0", "v1.29.6", [], {0: "v1.31.0"}), {})
    assert {r.reason for r in newer.refusals} == {RefusalReason.KUBE_PROXY_SKEW}
