"""Clusters as the command line names them: an ID, or the name a cluster joined with (`sim-0001`), resolved to its
ID before a command is sent; an ambiguous name is refused with the candidates."""

from __future__ import annotations

from collections.abc import Sequence

from flotilla_client.cli.common import BadUsage, CliContext, call
from flotilla_client.errors import ClientError
from flotilla_contracts.errors import ErrorCode
from flotilla_contracts.subjects import Service
from flotilla_contracts.v1 import registration as reg

REG = Service.REGISTRATION


class AmbiguousName(ValueError):
    """A name that more than one cluster has: the message lists them."""


def match_cluster(ref: str, clusters: Sequence[reg.ClusterInfo]) -> str | None:
    """The ID `ref` stands for among `clusters`: itself when it is an ID, else the one cluster with that name, a
    member before a deregistered one (registration lets one member at a time hold a name, and a name is free
    again after a deregistration); None when nothing matches; AmbiguousName when that leaves several."""
    if any(c.cluster_id == ref for c in clusters):
        return ref
    named = sorted((c for c in clusters if c.identity.name == ref), key=lambda c: c.cluster_id)
    members = [c for c in named if c.state is not reg.ClusterState.DEREGISTERED]
    named = members or named
    if len(named) > 1:
        candidates = ", ".join(f"{c.cluster_id} ({c.state.value}, joined {c.joined_at:%Y-%m-%d %H:%M})" for c in named)
        raise AmbiguousName(f"{len(named)} clusters are named {ref!r}: {candidates}; give one of these IDs instead")
    return named[0].cluster_id if named else None


def list_all_clusters(obj: CliContext, selector: str, states: list[reg.ClusterState]) -> list[reg.ClusterInfo]:
    """Every page of `clusters.list`."""
    found: list[reg.ClusterInfo] = []
    cursor = ""
    while True:
        page = call(
            obj,
            REG,
            "clusters.list",
            reg.ListClustersRequest(selector=selector, states=states, cursor=cursor),
            reg.ListClustersReply,
        )
        found += page.clusters
        if not page.next_cursor:
            return found
        cursor = page.next_cursor


def get_cluster(obj: CliContext, ref: str) -> reg.ClusterReply:
    """The cluster `ref` names, with its nodes: `clusters.get` by ID, else by the ID of the one cluster with that
    name (a member before a deregistered one). A ref nothing matches gets the service's not_found."""
    try:
        return call(obj, REG, "clusters.get", reg.GetClusterRequest(cluster_id=ref), reg.ClusterReply)
    except ClientError as exc:
        if exc.code not in (ErrorCode.NOT_FOUND, ErrorCode.INVALID_ID, ErrorCode.INVALID_FIELD):
            raise
        try:
            cluster_id = match_cluster(ref, list_all_clusters(obj, "", list(reg.ClusterState)))
        except AmbiguousName as ambiguous:
            raise BadUsage(f"{ambiguous}; nothing was sent") from None
        if cluster_id is None:
            raise
    return call(obj, REG, "clusters.get", reg.GetClusterRequest(cluster_id=cluster_id), reg.ClusterReply)


def resolve_cluster(obj: CliContext, ref: str) -> str:
    """The ID of the cluster `ref` names (an ID or a name, as get_cluster finds it)."""
    return get_cluster(obj, ref).cluster.cluster_id


def resolve_optional(obj: CliContext, ref: str | None) -> str | None:
    """resolve_cluster for an optional `--cluster`."""
    return resolve_cluster(obj, ref) if ref else ref
