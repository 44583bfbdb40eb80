"""A cluster's Kubernetes version as its agents report it: the oldest API server of its control plane.

Kubernetes' own skew policy reads a cluster's version this way (an HA control plane mid-upgrade runs at the
version of its oldest kube-apiserver). Pure: node facts in, a version or None out.
"""

from __future__ import annotations

from collections.abc import Iterable

from flotilla_contracts.v1.agent import NodeFacts
from flotilla_contracts.v1.common import NodeRole
from flotilla_kube.versions import KubeVersion, parse_version


def _parsed(text: str) -> KubeVersion | None:
    try:
        return parse_version(text)
    except ValueError:
        return None


def reported_version(nodes: Iterable[NodeFacts]) -> str | None:
    """The oldest API server version the control-plane nodes report (semver order: an RC below its release);
    a node's kubelet where it reports no API server version (kubeadm moves both together); None without a
    control-plane node (a managed cluster) or without a version that parses."""
    seen = [
        (parsed, text)
        for n in nodes
        if n.role is NodeRole.CONTROL_PLANE
        for text in [n.api_server_version or n.kubelet_version]
        for parsed in [_parsed(text)]
        if parsed is not None
    ]
    return min(seen, key=lambda pair: pair[0])[1] if seen else None
