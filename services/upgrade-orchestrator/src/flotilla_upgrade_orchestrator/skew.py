"""The Kubernetes version skew policy (DESIGN.md I3) as pure checks over parsed versions.

Control plane: one minor at a time, never skipping, never down. Kubelet: never newer than the oldest
API server (compared by minor: patch moves are free) and at most three minors older, two below 1.25.
kube-proxy, where the inventory reports it: the same two rules against the API server (kubernetes.io/releases/
version-skew-policy, "kube-proxy": "must not be newer than kube-apiserver", "may be up to three minor versions
older than kube-apiserver (kube-proxy < 1.25 may only be up to two minor versions older)"), and within that many
minors, older or newer, of the kubelet beside it.
Versions order as semver does (flotilla_kube.versions): v1.31.0-rc.1 is below v1.31.0, so an RC cluster moves
to GA and GA to its RC is a downgrade; the minor rules compare minors, which a pre-release shares with its release.
Unknown or malformed versions are refused, never guessed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from flotilla_contracts.v1.upgrade import RefusalReason, SkewRule
from flotilla_kube.versions import KubeVersion, parse_version

# Below this minor the kubelet may lag the API server by two minors only (Kubernetes skew policy).
WIDE_LAG_SINCE_MINOR = 25


@dataclass(frozen=True)
class Verdict:
    """One rule checked: passed or not, with the refusal it causes and a sentence for people."""

    rule: SkewRule
    ok: bool
    detail: str
    refusal: RefusalReason | None = None


def parse(text: str | None) -> KubeVersion | None:
    """The version, or None when missing or malformed (the caller refuses it as unknown)."""
    if not text:
        return None
    try:
        return parse_version(text)
    except ValueError:
        return None


def max_kubelet_lag(kubelet: KubeVersion) -> int:
    """How many minors a kubelet may trail the API server: 3, or 2 for kubelets older than 1.25."""
    return 3 if (kubelet.major, kubelet.minor) >= (1, WIDE_LAG_SINCE_MINOR) else 2


def kubelet_against_api(kubelet: KubeVersion, api_server: KubeVersion) -> list[Verdict]:
    """A kubelet against the oldest API server it talks to: not newer (by minor), not too far behind."""
    if kubelet.major != api_server.major:
        return [
            Verdict(
                SkewRule.KUBELET_NOT_NEWER_THAN_API_SERVER,
                False,
                f"kubelet {kubelet} and API server {api_server} differ in major version",
                RefusalReason.UNKNOWN_VERSION,
            )
        ]
    behind = kubelet.minors_behind(api_server)
    limit = max_kubelet_lag(kubelet)
    newer = Verdict(
        SkewRule.KUBELET_NOT_NEWER_THAN_API_SERVER,
        behind >= 0,
        f"kubelet {kubelet} {'is not newer than' if behind >= 0 else 'is newer than'} API server {api_server}",
        None if behind >= 0 else RefusalReason.DOWNGRADE,
    )
    lag = Verdict(
        SkewRule.KUBELET_MAX_MINOR_LAG,
        behind <= limit,
        f"kubelet {kubelet} is {max(behind, 0)} minor(s) behind API server {api_server} (at most {limit})",
        None if behind <= limit else RefusalReason.KUBELET_TOO_OLD,
    )
    return [newer, lag]


def control_plane_move(current: KubeVersion, target: KubeVersion) -> list[Verdict]:
    """An API server from `current` to `target`: same major, not down, at most one minor up."""
    if current.major != target.major:
        return [
            Verdict(
                SkewRule.CONTROL_PLANE_ONE_MINOR,
                False,
                f"control plane {current} cannot move to {target}: the major version differs",
                RefusalReason.SKIPS_MINOR,
            )
        ]
    down = target < current
    steps = current.minors_behind(target)
    return [
        Verdict(
            SkewRule.NO_DOWNGRADE,
            not down,
            f"control plane {current} -> {target} is {'a downgrade' if down else 'not a downgrade'}",
            RefusalReason.DOWNGRADE if down else None,
        ),
        Verdict(
            SkewRule.CONTROL_PLANE_ONE_MINOR,
            steps <= 1,
            f"control plane {current} -> {target} moves {max(steps, 0)} minor(s) (at most 1, never skipping)",
            None if steps <= 1 else RefusalReason.SKIPS_MINOR,
        ),
    ]


def node_move(current: KubeVersion, target: KubeVersion) -> Verdict:
    """A node's kubelet from `current` to `target`: never down (patch level included)."""
    down = target < current
    return Verdict(
        SkewRule.NO_DOWNGRADE,
        not down,
        f"kubelet {current} -> {target} is {'a downgrade' if down else 'not a downgrade'}",
        RefusalReason.DOWNGRADE if down else None,
    )


def cluster_upgrade(
    api_servers: Iterable[KubeVersion], worker_kubelets: Iterable[KubeVersion], target: KubeVersion
) -> list[Verdict]:
    """Every skew rule for a cluster moving to `target`, control plane first (I2) then workers.

    The states the upgrade passes through: the control plane moves (one minor at most), then every worker
    kubelet talks to API servers at `target` while it waits its turn, so it must be within the lag then.
    """
    apis = sorted(api_servers)
    verdicts: list[Verdict] = []
    if not apis:
        return [Verdict(SkewRule.KNOWN_VERSION, False, "no control-plane node is known", RefusalReason.UNKNOWN_VERSION)]
    verdicts += control_plane_move(apis[0], target)
    if apis[-1] > target:
        verdicts.append(node_move(apis[-1], target))
    for kubelet in sorted(set(worker_kubelets)):
        if kubelet > target:
            verdicts.append(node_move(kubelet, target))
        verdicts += [v for v in kubelet_against_api(kubelet, target) if v.rule is SkewRule.KUBELET_MAX_MINOR_LAG]
    return verdicts


def kubelet_may_move(kubelet_target: KubeVersion, api_servers: Iterable[KubeVersion]) -> bool:
    """I2/I3 at the moment of a worker step: its new kubelet is not newer than the oldest API server."""
    apis = list(api_servers)
    return bool(apis) and all(
        kubelet_target.major == api.major and kubelet_target.minors_behind(api) >= 0 for api in apis
    )


def kube_proxy_against(kube_proxy: KubeVersion, api_server: KubeVersion, kubelet: KubeVersion) -> list[Verdict]:
    """A kube-proxy against the API server it will talk to and the kubelet beside it (both as after the move)."""
    if kube_proxy.major != api_server.major or kube_proxy.major != kubelet.major:
        return [
            Verdict(
                SkewRule.KUBE_PROXY_NOT_NEWER_THAN_API_SERVER,
                False,
                f"kube-proxy {kube_proxy}, API server {api_server} and kubelet {kubelet} differ in major version",
                RefusalReason.KUBE_PROXY_SKEW,
            )
        ]
    behind = kube_proxy.minors_behind(api_server)
    limit = max_kubelet_lag(kube_proxy)  # the same 3 (2 below 1.25) the policy gives kubelets
    apart = abs(kube_proxy.minors_behind(kubelet))
    return [
        Verdict(
            SkewRule.KUBE_PROXY_NOT_NEWER_THAN_API_SERVER,
            behind >= 0,
            f"kube-proxy {kube_proxy} {'is not' if behind >= 0 else 'is'} newer than API server {api_server}",
            None if behind >= 0 else RefusalReason.KUBE_PROXY_SKEW,
        ),
        Verdict(
            SkewRule.KUBE_PROXY_MAX_MINOR_LAG,
            behind <= limit and apart <= limit,
            f"kube-proxy {kube_proxy} is {max(behind, 0)} minor(s) behind API server {api_server} and {apart} "
            f"apart from kubelet {kubelet} (at most {limit})",
            None if behind <= limit and apart <= limit else RefusalReason.KUBE_PROXY_SKEW,
        ),
    ]
