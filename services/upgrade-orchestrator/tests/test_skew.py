"""The skew policy (I3): unit cases from the Kubernetes policy and properties over generated versions."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from flotilla_contracts.v1.upgrade import RefusalReason
from flotilla_kube.versions import KubeVersion
from flotilla_upgrade_orchestrator import skew
from flotilla_upgrade_orchestrator.releases import Releases

versions = st.builds(KubeVersion, st.just(1), st.integers(20, 34), st.integers(0, 20))


def v(text: str) -> KubeVersion:
    parsed = skew.parse(text)
    assert parsed is not None
    return parsed


def refusals(verdicts: list[skew.Verdict]) -> set[RefusalReason]:
    return {x.refusal for x in verdicts if not x.ok and x.refusal is not None}


def test_policy_examples() -> None:
    assert refusals(skew.control_plane_move(v("1.29.6"), v("1.30.4"))) == set()
    assert refusals(skew.control_plane_move(v("1.29.6"), v("1.29.9"))) == set()  # patch moves are free
    assert refusals(skew.control_plane_move(v("1.29.6"), v("1.31.0"))) == {RefusalReason.SKIPS_MINOR}
    assert refusals(skew.control_plane_move(v("1.30.4"), v("1.30.2"))) == {RefusalReason.DOWNGRADE}
    assert refusals(skew.kubelet_against_api(v("1.27.0"), v("1.30.0"))) == set()  # 3 behind is fine since 1.25
    assert refusals(skew.kubelet_against_api(v("1.26.0"), v("1.30.0"))) == {RefusalReason.KUBELET_TOO_OLD}
    assert refusals(skew.kubelet_against_api(v("1.22.0"), v("1.25.0"))) == {
        RefusalReason.KUBELET_TOO_OLD
    }  # 2 below 1.25
    assert refusals(skew.kubelet_against_api(v("1.31.0"), v("1.30.9"))) == {RefusalReason.DOWNGRADE}
    assert skew.parse("1.30") is None and skew.parse("") is None and skew.parse("v1.30.4+k3s1") is not None


def test_release_table_refuses_unknown_versions() -> None:
    releases = Releases()
    assert releases.known(v("v1.30.4")) and not releases.known(v("v1.30.99")) and not releases.known(v("v1.99.0"))
    assert Releases.with_extra(["v1.99.0"]).known(v("v1.99.0"))


@given(versions, versions)
def test_control_plane_moves_one_minor_at_a_time_never_down(current: KubeVersion, target: KubeVersion) -> None:
    ok = not refusals(skew.control_plane_move(current, target))
    assert ok == (target >= current and target.minor - current.minor <= 1)


@given(versions, versions)
def test_kubelet_never_newer_and_at_most_three_minors_behind(kubelet: KubeVersion, api: KubeVersion) -> None:
    ok = not refusals(skew.kubelet_against_api(kubelet, api))
    lag = 3 if kubelet.minor >= 25 else 2
    assert ok == (kubelet.minor <= api.minor and api.minor - kubelet.minor <= lag)


@st.composite
def clusters(draw: st.DrawFn) -> tuple[list[KubeVersion], list[KubeVersion], KubeVersion]:
    cps = draw(st.lists(versions, min_size=1, max_size=3))
    oldest = min(cps)
    workers = draw(st.lists(versions.filter(lambda w: w.minor <= oldest.minor), max_size=5))
    return cps, workers, draw(versions)


def _valid(apis: list[KubeVersion], kubelets: list[KubeVersion]) -> bool:
    oldest, newest = min(apis), max(apis)
    if newest.minor - oldest.minor > 1:
        return False
    return all(k.minor <= oldest.minor and oldest.minor - k.minor <= (3 if k.minor >= 25 else 2) for k in kubelets)


@given(clusters())
def test_an_accepted_cluster_passes_only_through_valid_states(cluster: tuple[Any, Any, KubeVersion]) -> None:
    """Accepted: every state of control-plane-first (one at a time), then workers, obeys the policy. Refused:
    some rule really would break (the planner refuses no more than it must)."""
    cps, workers, target = cluster
    verdicts = skew.cluster_upgrade(cps, workers, target)
    accepted = not refusals(verdicts)
    would_break = (
        target.minor - min(cps).minor > 1
        or any(x > target for x in [*cps, *workers])
        or any(target.minor - w.minor > (3 if w.minor >= 25 else 2) for w in workers)
    )
    assert accepted == (not would_break)
    if not accepted:
        return
    apis = list(cps)
    for i in range(len(apis)):
        apis[i] = target
        assert _valid(apis, workers) or not _valid(cps, workers)
    kubelets = list(workers)
    for i in range(len(kubelets)):
        kubelets[i] = target
        assert _valid(apis, kubelets) or not _valid(cps, workers)
