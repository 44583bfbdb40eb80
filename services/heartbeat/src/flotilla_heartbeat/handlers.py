"""Health queries <-> the model: one replica's answers, and the merge of every partition's answers."""

from __future__ import annotations

from collections import Counter

from flotilla_contracts.v1.heartbeat import (
    ClusterHealth,
    ClusterHealthInfo,
    ClustersHealthReply,
    ClustersHealthRequest,
    FleetHealthReply,
    FleetHealthRequest,
    NodeCounts,
    NodeHealthInfo,
    NodesHealthReply,
    NodesHealthRequest,
)
from flotilla_heartbeat.domain import HealthModel
from flotilla_heartbeat.health_state import CLUSTER_SEVERITY, Cluster, Node, counts_of, node_name_of

_SEP = " "  # below every token character, so keys sort as (cluster, node)


def cluster_info(model: HealthModel, cluster: Cluster) -> ClusterHealthInfo:
    kubelets = sorted({n.facts.kubelet_version for n in cluster.nodes.values() if n.facts})[:64]
    apis: list[str] = sorted(
        {v for n in cluster.nodes.values() if n.facts and n.facts.api_server and (v := n.facts.api_server.version)}
    )[:16]
    return ClusterHealthInfo(
        cluster_id=cluster.cluster_id,
        state=cluster.state or ClusterHealth.UNKNOWN,
        since=model.to_datetime(cluster.since) if cluster.state else None,
        reason=cluster.reason,
        message=cluster.message,
        last_heartbeat_at=model.to_datetime(cluster.last_heard) if cluster.last_heard >= 0 else None,
        nodes=counts_of(cluster),
        api_server_versions=[v for v in apis if v is not None],
        kubelet_versions=kubelets,
    )


def node_info(model: HealthModel, node: Node) -> NodeHealthInfo | None:
    if node.state is None:
        return None
    facts = node.facts
    return NodeHealthInfo(
        cluster_id=node.cluster_id,
        node_id=node.node_id,
        node_name=node_name_of(node),
        role=facts.role if facts else NodeHealthInfo.__struct_defaults__[0],
        state=node.state,
        since=model.to_datetime(node.since),
        reason=node.reason,
        last_heartbeat_at=model.to_datetime(node.heard) if node.heard >= 0 else None,
        last_seq=node.seq,
        clock_skew_s=round(node.skew, 3),
        kubelet_version=facts.kubelet_version if facts else None,
        kube_proxy_version=facts.kube_proxy_version if facts else None,
        conditions=model.conditions(node),
        api_server=facts.api_server if facts else None,
        allocatable=facts.allocatable if facts else None,
        agent_version=facts.agent_version if facts else "",
    )


def _badness(info: ClusterHealthInfo) -> tuple[int, int, str]:
    bad = info.nodes.not_ready + info.nodes.unreachable + info.nodes.lost
    return (-CLUSTER_SEVERITY[info.state], -bad, info.cluster_id)


def summary(model: HealthModel, request: FleetHealthRequest, owned: list[int], count: int) -> FleetHealthReply:
    states: Counter[ClusterHealth] = Counter()
    totals = [0, 0, 0, 0, 0]
    worst: list[Cluster] = []
    for cluster in model.clusters.values():
        states[cluster.state or ClusterHealth.UNKNOWN] += 1
        for i, n in enumerate(cluster.counts):
            totals[i] += n
        if cluster.state not in (ClusterHealth.READY, None):
            worst.append(cluster)
    infos = sorted((cluster_info(model, c) for c in worst), key=_badness)[: request.worst]
    return FleetHealthReply(
        clusters=dict(states),
        nodes=NodeCounts(ready=totals[1], not_ready=totals[2], unreachable=totals[3], lost=totals[4]),
        worst_clusters=infos,
        partitions=owned,
        partition_count=count,
    )


def merge_summaries(replies: list[FleetHealthReply], worst: int, count: int) -> FleetHealthReply:
    states: Counter[ClusterHealth] = Counter()
    nodes = [0, 0, 0, 0]
    infos: list[ClusterHealthInfo] = []
    for reply in replies:
        states.update(reply.clusters)
        n = reply.nodes
        nodes = [nodes[0] + n.ready, nodes[1] + n.not_ready, nodes[2] + n.unreachable, nodes[3] + n.lost]
        infos += reply.worst_clusters
    return FleetHealthReply(
        clusters=dict(states),
        nodes=NodeCounts(ready=nodes[0], not_ready=nodes[1], unreachable=nodes[2], lost=nodes[3]),
        worst_clusters=sorted(infos, key=_badness)[:worst],
        partitions=sorted({p for r in replies for p in r.partitions}),
        partition_count=count,
    )


def clusters_page(
    model: HealthModel, request: ClustersHealthRequest, owned: list[int], count: int
) -> ClustersHealthReply:
    wanted = set(request.cluster_ids)
    ids = sorted(c for c in model.clusters if c > request.cursor and (not wanted or c in wanted))
    page: list[ClusterHealthInfo] = []
    last = ""
    for cluster_id in ids:
        info = cluster_info(model, model.clusters[cluster_id])
        if request.states and info.state not in request.states:
            continue
        if len(page) == request.limit:
            return ClustersHealthReply(clusters=page, next_cursor=last, partitions=owned, partition_count=count)
        page.append(info)
        last = cluster_id
    return ClustersHealthReply(clusters=page, partitions=owned, partition_count=count)


def merge_clusters(replies: list[ClustersHealthReply], limit: int, count: int) -> ClustersHealthReply:
    """k-way merge of sorted pages: exact paging across partitions with a cursor = the last cluster id."""
    merged = sorted((c for r in replies for c in r.clusters), key=lambda c: c.cluster_id)
    more = len(merged) > limit or any(r.next_cursor for r in replies)
    page = merged[:limit]
    cursor = page[-1].cluster_id if more and page else ""
    partitions = sorted({p for r in replies for p in r.partitions})
    return ClustersHealthReply(clusters=page, next_cursor=cursor, partitions=partitions, partition_count=count)


def _node_key(node: NodeHealthInfo) -> str:
    return f"{node.cluster_id}{_SEP}{node.node_id}"


def nodes_page(model: HealthModel, request: NodesHealthRequest, owned: list[int], count: int) -> NodesHealthReply:
    if request.cluster_id is not None:
        found = model.clusters.get(request.cluster_id)
        clusters = [found] if found else []
    else:
        clusters = [model.clusters[c] for c in sorted(model.clusters)]
    page: list[NodeHealthInfo] = []
    for cluster in clusters:
        for node_id in sorted(cluster.nodes):
            if f"{cluster.cluster_id}{_SEP}{node_id}" <= request.cursor:
                continue
            info = node_info(model, cluster.nodes[node_id])
            if info is None or (request.states and info.state not in request.states):
                continue
            if len(page) == request.limit:
                return NodesHealthReply(
                    nodes=page, next_cursor=_node_key(page[-1]), partitions=owned, partition_count=count
                )
            page.append(info)
    return NodesHealthReply(nodes=page, partitions=owned, partition_count=count)


def merge_nodes(replies: list[NodesHealthReply], limit: int, count: int) -> NodesHealthReply:
    merged = sorted((n for r in replies for n in r.nodes), key=_node_key)
    more = len(merged) > limit or any(r.next_cursor for r in replies)
    page = merged[:limit]
    cursor = _node_key(page[-1]) if more and page else ""
    partitions = sorted({p for r in replies for p in r.partitions})
    return NodesHealthReply(nodes=page, next_cursor=cursor, partitions=partitions, partition_count=count)
