"""DESIGN.md's upgrade invariants, checked from the event log alone (FLEET_EVENTS and FLEET_REPORTS by time)."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

FORWARD = ["Pending", "Cordoned", "Drained", "Upgraded", "Verified", "Uncordoned"]
AVAILABLE = {"Pending", "Uncordoned"}
BUSY_CLUSTER = {"UpgradingControlPlane", "UpgradingWorkers", "RollingBack"}


@dataclass
class Verdict:
    violations: list[str] = field(default_factory=list)
    max_unavailable_seen: dict[str, int] = field(default_factory=dict)
    max_busy_clusters: int = 0
    node_transitions: int = 0
    steps_reported: int = 0

    def fail(self, text: str) -> None:
        if len(self.violations) < 50:
            self.violations.append(text)


def check(events: list[tuple[str, str, dict[str, Any]]], *, max_unavailable: int, max_clusters: int) -> Verdict:
    """`events`: (subject, schema, data) in time order. Returns what was seen and every violation."""
    verdict = Verdict()
    roles: dict[tuple[str, str], str] = {}
    state: dict[tuple[str, str, str], str] = {}
    cordoned_by_us: set[tuple[str, str, str]] = set()
    cluster_state: dict[tuple[str, str], str] = {}
    succeeded = Counter[str]()
    for _subject, schema, data in events:
        name = schema.split("/")[0]
        if name == "upgrade.RolloutStarted":
            for wave in data["plan"]["waves"]:
                for cluster in wave["clusters"]:
                    for node in cluster["control_plane"]:
                        roles[(cluster["cluster_id"], node["node_id"])] = "control-plane"
                    for node in cluster["workers"]:
                        roles[(cluster["cluster_id"], node["node_id"])] = "worker"
        elif name == "upgrade.ClusterRolloutStateChanged":
            cluster_state[(data["rollout_id"], data["cluster_id"])] = data["to"]
            busy = sum(1 for s in cluster_state.values() if s in BUSY_CLUSTER)
            verdict.max_busy_clusters = max(verdict.max_busy_clusters, busy)
            if busy > max_clusters:
                verdict.fail(f"{busy} clusters in progress at once (max {max_clusters})")
        elif name == "upgrade.NodeStepStateChanged":
            verdict.node_transitions += 1
            _node_move(verdict, data, state, cordoned_by_us, roles, max_unavailable)
        elif name == "agent.NodeStepReported":
            verdict.steps_reported += 1
            if data["outcome"] == "succeeded" and not data.get("replayed"):
                succeeded[data["command_id"]] += 1
                if succeeded[data["command_id"]] > 1:
                    verdict.fail(f"I4: command {data['command_id']} ({data['step']} on {data['node_id']}) ran twice")
    return verdict


def _node_move(
    verdict: Verdict,
    data: dict[str, Any],
    state: dict[tuple[str, str, str], str],
    cordoned_by_us: set[tuple[str, str, str]],
    roles: dict[tuple[str, str], str],
    max_unavailable: int,
) -> None:
    rollout, cluster, node = data["rollout_id"], data["cluster_id"], data["node_id"]
    key = (rollout, cluster, node)
    before, after = state.get(key, "Pending"), data["to"]
    where = f"{cluster}/{node}"
    forward = data.get("direction", "forward") == "forward"
    if forward and before in FORWARD and after in FORWARD and FORWARD.index(after) < FORWARD.index(before):
        verdict.fail(f"I4: {where} moved back {before} -> {after} without a rollback")
    if after == "Cordoned":
        cordoned_by_us.add(key)
    if after == "Uncordoned" and key not in cordoned_by_us:
        verdict.fail(f"I9: {where} uncordoned but never cordoned by this rollout")
    if after == "Upgraded" and roles.get((cluster, node)) == "worker":
        waiting = [
            n for (c, n), role in roles.items()
            if c == cluster and role == "control-plane" and state.get((rollout, c, n)) not in ("Verified", "Uncordoned")
        ]  # fmt: skip
        if waiting:
            verdict.fail(f"I2: worker {where} upgraded before control plane {waiting} was at the target")
    state[key] = after
    unavailable = [k for k, s in state.items() if k[:2] == (rollout, cluster) and s not in AVAILABLE]
    verdict.max_unavailable_seen[cluster] = max(verdict.max_unavailable_seen.get(cluster, 0), len(unavailable))
    if len(unavailable) > max_unavailable:
        verdict.fail(f"I1: {len(unavailable)} nodes of {cluster} unavailable at once (max {max_unavailable})")
    cp_busy = [k for k in unavailable if roles.get((k[1], k[2])) == "control-plane" and state[k] != "Failed"]
    if len(cp_busy) > 1:
        verdict.fail(f"I2: {len(cp_busy)} control-plane nodes of {cluster} out at once")


def final_states(events: list[tuple[str, str, dict[str, Any]]]) -> dict[tuple[str, str], tuple[str, str | None]]:
    """(cluster, node) -> (last step state, last kubelet version reported by the orchestrator)."""
    last: dict[tuple[str, str], tuple[str, str | None]] = {}
    versions: dict[tuple[str, str], str | None] = defaultdict(lambda: None)
    for _subject, schema, data in events:
        if schema.startswith("upgrade.NodeStepStateChanged/"):
            key = (data["cluster_id"], data["node_id"])
            versions[key] = data.get("kubelet_version") or versions[key]
            last[key] = (data["to"], versions[key])
    return last
