"""Semantic-version precedence (semver.org §11) for Kubernetes versions: examples and order properties."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flotilla_kube.versions import KubeVersion, parse_version

# Identifiers that exercise every branch: numeric (incl. multi-digit), alphanumeric, hyphenated.
_idents = st.one_of(
    st.integers(0, 12).map(str),
    st.sampled_from(["alpha", "beta", "rc", "a", "b", "0a", "x-1", "RC", "eks-1"]),
)
_pre = st.one_of(st.just(""), st.lists(_idents, min_size=1, max_size=3).map(".".join))
_build = st.one_of(st.just(""), st.sampled_from(["k3s1", "abc.1", "001", "build-7"]))
versions = st.builds(
    lambda ma, mi, pa, pre, build: parse_version(
        f"v{ma}.{mi}.{pa}" + (f"-{pre}" if pre else "") + (f"+{build}" if build else "")
    ),
    st.integers(0, 2),
    st.integers(0, 3),
    st.integers(0, 2),
    _pre,
    _build,
)


def v(text: str) -> KubeVersion:
    return parse_version(text)


def test_semver_spec_example_order() -> None:
    """The chain semver.org §11 gives, and Kubernetes' own pre-release names."""
    chain = [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
        "1.0.1-alpha.0",
        "1.0.1",
        "1.1.0",
        "2.0.0",
    ]
    parsed = [v(t) for t in chain]
    assert parsed == sorted(parsed)
    assert all(a < b for a, b in itertools.pairwise(parsed))


def test_kubernetes_examples() -> None:
    assert v("v1.31.0-rc.1") < v("v1.31.0")
    assert v("v1.31.0-alpha.3") < v("v1.31.0-beta.0") < v("v1.31.0-rc.0") < v("v1.31.0-rc.1") < v("v1.31.0")
    assert v("v1.31.0-rc.2") < v("v1.31.0-rc.10")  # numeric identifiers compare as numbers
    assert v("v1.30.14") < v("v1.31.0-alpha.1")  # a pre-release of 1.31 is above every 1.30 patch
    assert v("v1.31.0") < v("v1.31.1-rc.0")
    assert not v("v1.31.0") < v("v1.31.0-rc.1")


def test_build_metadata_is_ignored_for_precedence() -> None:
    assert v("1.29.6+k3s1") == v("v1.29.6")
    assert hash(v("1.29.6+k3s1")) == hash(v("v1.29.6"))
    assert not v("1.29.6+k3s2") > v("1.29.6+k3s1")
    assert str(v("1.29.6+k3s1")) == "v1.29.6+k3s1"  # kept for display
    assert v("v1.31.0-rc.1+abc") == v("v1.31.0-rc.1")


def test_parts_and_display() -> None:
    rc = v("1.31.0-rc.1+abc")
    assert (rc.major, rc.minor, rc.patch, rc.pre, rc.build) == (1, 31, 0, "rc.1", "abc")
    assert str(rc) == "v1.31.0-rc.1+abc"
    assert rc.is_pre_release and rc.is_release_candidate
    assert rc.release == v("v1.31.0") and not rc.release.is_pre_release
    assert v("v1.31.0-beta.2").is_pre_release and not v("v1.31.0-beta.2").is_release_candidate
    assert v("v1.30.4") == KubeVersion(1, 30, 4)
    assert v("v1.27.1").minors_behind(v("v1.30.0-rc.1")) == 3


@pytest.mark.parametrize(
    "bad",
    ["1.30", "v1.30.x", "latest", "v01.2.3", "v1.2.3-", "v1.2.3-rc..1", "v1.2.3-rc.01", "v1.2.3+", "v1.2.3-r c"],
)
def test_malformed_versions_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="not a Kubernetes version"):
        v(bad)


def test_comparing_with_something_else_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        _ = v("v1.30.0") < "v1.31.0"  # type: ignore[operator]
    assert v("v1.30.0") != "v1.30.0"


@given(versions, versions)
def test_total_and_antisymmetric(a: KubeVersion, b: KubeVersion) -> None:
    assert [a < b, a == b, a > b].count(True) == 1  # exactly one holds
    if a <= b and b <= a:
        assert a == b and hash(a) == hash(b)
    assert (a < b) == (b > a) and (a <= b) == (b >= a)


@given(versions, versions, versions)
def test_transitive(a: KubeVersion, b: KubeVersion, c: KubeVersion) -> None:
    if a <= b and b <= c:
        assert a <= c
    if a < b and b < c:
        assert a < c


@given(versions)
def test_a_pre_release_is_below_its_release(a: KubeVersion) -> None:
    if a.is_pre_release:
        assert a < a.release
        assert a.release.minors_behind(a) == 0
    else:
        assert a == a.release


@given(versions)
def test_parse_of_str_round_trips(a: KubeVersion) -> None:
    again = parse_version(str(a))
    assert again == a and str(again) == str(a) and again.build == a.build
