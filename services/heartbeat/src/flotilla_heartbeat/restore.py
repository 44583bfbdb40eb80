"""After a restart: membership and checkpointed health back into the model, under a startup grace."""

from __future__ import annotations

from flotilla_contracts.v1.heartbeat import ClusterHealth, NodeHealth
from flotilla_contracts.v1.registration import ClusterState
from flotilla_heartbeat import store as tables
from flotilla_heartbeat.domain import HealthModel
from flotilla_heartbeat.health_state import API_NONE, COUNT_INDEX, SEVERITY, api_state, move_api, reported_ready
from flotilla_heartbeat.membership import Membership
from flotilla_runtime.store import Store


async def restore(store: Store, model: HealthModel, membership: Membership) -> dict[str, str]:
    """Load members, inventory and the last checkpoint; nothing becomes Unreachable before the grace ends."""
    members = await tables.load_members(store)
    for cluster_id, state in members.items():
        membership.apply_state(cluster_id, ClusterState(state))
    now = model.started
    for cluster_id, node_id, node_name in await tables.load_inventory(store):
        model.add_node(cluster_id, node_id, node_name, now, listed=True)
    nodes, clusters = await tables.load_health(store)
    offset = model.wall_offset
    for row in nodes:
        node = model.add_node(str(row["cluster_id"]), str(row["node_id"]), str(row["node_name"] or ""), now)
        if node is None:
            continue
        cluster = model.clusters[node.cluster_id]
        if row["node_name"] is None:
            node.node_name = None
        facts = tables.decode_facts(row["facts"])
        node.facts = model.intern(facts) if facts is not None else None  # shared, as a heartbeat's are
        if node.facts is not None:
            node.ready = reported_ready(node.facts.conditions)
            node.api = api_state(node.facts.api_server)
            move_api(cluster, API_NONE, node.api)
        health = NodeHealth(row["state"]) if row["state"] else None
        cluster.counts[COUNT_INDEX[node.state]] -= 1
        cluster.counts[COUNT_INDEX[health]] += 1
        node.state, node.reason = health, str(row["reason"])
        node.since = float(row["since"]) - offset
        last_seen = row["last_seen"]
        node.heard = float(last_seen) - offset if last_seen is not None else -1.0
        node.raw_good = health in (NodeHealth.READY, None)
        if SEVERITY[health] > 0:
            node.last_worse = node.since
        node.seq = int(row["seq"])
        node.skew = float(row["skew"])
        model.hold(now + model.policy.startup_grace_s)
        model.requeue(node)
    for row in clusters:
        found = model.clusters.get(str(row["cluster_id"]))
        if found is not None:
            cluster = found
            cluster.state = ClusterHealth(row["state"])
            cluster.since = float(row["since"]) - offset
            cluster.reason, cluster.message = str(row["reason"]), str(row["message"])
    return members
