"""An oracle of its own: DESIGN.md's upgrade invariants checked from the event log alone.

Written from the invariant text in DESIGN.md (I1-I10) and the Kubernetes version skew policy, not from the
orchestrator's code: nothing here imports the orchestrator or copies its tables. Its inputs are what anyone
can replay: FLEET_EVENTS and FLEET_REPORTS merged by time, as (subject, schema, data) with data decoded JSON.

What it checks, and from which facts:
- I1 per cluster, nodes out of service by the rollout (between Cordoned and Uncordoned, or Failed and not yet
  given back) never exceed max_unavailable; a new cordon never takes the count (ours plus nodes heartbeat
  reported NotReady/Unreachable/Lost before the cordon began) above it; clusters in progress never exceed
  max_clusters.
- I2 control-plane nodes one at a time; `kubeadm upgrade apply` planned on the first, `node` on the rest; no
  worker upgraded before every planned control-plane node was verified.
- I3 (Kubernetes version skew policy, https://kubernetes.io/releases/version-skew-policy/): an API server
  moves at most one minor at a time; a worker kubelet is never a newer minor than the oldest API server of its
  cluster, and at most 3 minors older, 2 for a kubelet below v1.25 ("kubelet may be up to three minor versions
  older than kube-apiserver; kubelet < 1.25 may only be up to two minor versions older").
- I4 node states only move forward (Pending, Cordoned, Drained, Upgraded, Verified, Uncordoned, or Failed)
  unless the event says direction rollback (or a retry returns a Failed node); a command never succeeds twice
  (a replayed answer from the agent's journal is not a second effect).
- I6 an agent never starts a command of a rollout at an older epoch than one it already answered.
- I7 every freeze names its reason; no cordon begins while its rollout or cluster is frozen (beyond `slack_s`,
  the time a command issued just before the freeze may still take to start).
- I9 a node is uncordoned only if this rollout cordoned it, never when its cordon found it already cordoned.
- I10 is the caller's, from `final_states`.
I5 (eviction only) and I8 (commit before ack) are not visible in the event log: the Kubernetes test checks I5
from the API server's audit log, the chaos tests I8 from the agents' journals.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# DESIGN.md I4, in its own words and order; "Failed" stands outside it.
FORWARD = ["Pending", "Cordoned", "Drained", "Upgraded", "Verified", "Uncordoned"]
_IN_SERVICE = {"Pending", "Uncordoned"}
_IN_PROGRESS = {"UpgradingControlPlane", "UpgradingWorkers", "RollingBack"}  # a cluster holding a slot (I1)
_DOWN = {"NotReady", "Unreachable", "Lost"}
_VERSION = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)")
Event = tuple[str, str, dict[str, Any]]


@dataclass
class Verdict:
    violations: list[str] = field(default_factory=list)
    max_unavailable_seen: dict[str, int] = field(default_factory=dict)
    max_busy_clusters: int = 0
    node_transitions: int = 0
    steps_reported: int = 0

    def fail(self, text: str) -> None:
        if len(self.violations) < 50 and text not in self.violations:
            self.violations.append(text)


def minor(version: str | None) -> tuple[int, int] | None:
    """(major, minor) of a Kubernetes version, None when it is not one."""
    found = _VERSION.match(version or "")
    return None if found is None else (int(found[1]), int(found[2]))


def kubelet_skew(kubelet: str, api_server: str) -> str | None:
    """Why a kubelet may not run against this API server (version skew policy), or None when it may."""
    k, a = minor(kubelet), minor(api_server)
    if k is None or a is None:
        return None
    if k > a:
        return f"kubelet {kubelet} is newer than API server {api_server}"
    allowed = 2 if k < (1, 25) else 3
    if k[0] == a[0] and a[1] - k[1] > allowed:
        return f"kubelet {kubelet} is {a[1] - k[1]} minors older than API server {api_server} (at most {allowed})"
    return None


def _time(data: dict[str, Any]) -> float | None:
    raw = data.get("occurred_at")
    try:
        return datetime.fromisoformat(raw).timestamp() if isinstance(raw, str) else None
    except ValueError:
        return None


@dataclass
class _World:
    """What the log has said so far."""

    max_unavailable: int
    max_clusters: int
    slack_s: float
    roles: dict[tuple[str, str], str] = field(default_factory=dict)  # (cluster, node) -> role
    kubelet: dict[tuple[str, str], str] = field(default_factory=dict)  # (cluster, node) -> version
    first_cp: dict[tuple[str, str], str] = field(default_factory=dict)  # (rollout, cluster) -> first CP node
    state: dict[tuple[str, str, str], str] = field(default_factory=dict)  # (rollout, cluster, node) -> state
    given_back: set[tuple[str, str, str]] = field(default_factory=set)  # Failed, then uncordoned
    wound_down: set[tuple[str, str, str]] = field(default_factory=set)  # uncordoned before it was Verified
    cordoned: set[tuple[str, str, str]] = field(default_factory=set)  # cordoned by the rollout
    found_cordoned: set[tuple[str, str, str]] = field(default_factory=set)  # cordon found it cordoned
    down_since: dict[tuple[str, str], float] = field(default_factory=dict)  # heartbeat: not Ready since
    cluster_state: dict[tuple[str, str], str] = field(default_factory=dict)
    rollout_frozen: dict[str, float] = field(default_factory=dict)  # rollout -> frozen since
    cluster_frozen: dict[tuple[str, str], float] = field(default_factory=dict)
    succeeded: Counter[str] = field(default_factory=Counter)
    command_started: set[str] = field(default_factory=set)
    epochs: dict[tuple[str, str, str], int] = field(default_factory=dict)


def check(events: list[Event], *, max_unavailable: int, max_clusters: int, slack_s: float = 5.0) -> Verdict:
    """`events`: (subject, schema, data) in time order. Returns what was seen and every violation."""
    verdict = Verdict()
    world = _World(max_unavailable, max_clusters, slack_s)
    for _subject, schema, data in events:
        name = schema.split("/")[0]
        if name == "upgrade.RolloutStarted":
            _started(verdict, world, data)
        elif name == "upgrade.ClusterRolloutStateChanged":
            _cluster_moved(verdict, world, data)
        elif name == "upgrade.RolloutStateChanged":
            rollout_id = data["rollout"]["rollout_id"]
            if data["to"] == "Frozen":
                world.rollout_frozen.setdefault(rollout_id, _time(data) or 0.0)
            else:
                world.rollout_frozen.pop(rollout_id, None)
        elif name == "upgrade.RolloutFrozen":
            freeze = data.get("freeze") or {}
            if not freeze.get("reason") or not freeze.get("message"):
                verdict.fail(f"I7: rollout {data['rollout_id']} froze without a stated reason: {freeze}")
        elif name == "upgrade.NodeStepStateChanged":
            verdict.node_transitions += 1
            _node_moved(verdict, world, data)
        elif name == "agent.NodeStepReported":
            verdict.steps_reported += 1
            _reported(verdict, world, data)
        elif name == "heartbeat.NodeHealthChanged":
            key = (data["cluster_id"], data["node_id"])
            if data["to"] in _DOWN:
                world.down_since.setdefault(key, _time(data) or 0.0)
            else:
                world.down_since.pop(key, None)
    return verdict


def _started(verdict: Verdict, world: _World, data: dict[str, Any]) -> None:
    rollout_id = data.get("rollout_id", "")
    target = data["plan"].get("target_version")
    for wave in data["plan"]["waves"]:
        for cluster in wave["clusters"]:
            cluster_id = cluster["cluster_id"]
            for index, node in enumerate(cluster["control_plane"]):
                world.roles[(cluster_id, node["node_id"])] = "control-plane"
                _plan_version(world, cluster_id, node)
                action = node.get("kubeadm_action")
                if index == 0:
                    world.first_cp[(rollout_id, cluster_id)] = node["node_id"]
                want = "apply" if index == 0 else "node"
                if action is not None and action != want:
                    verdict.fail(f"I2: {cluster_id}/{node['node_id']} planned `kubeadm upgrade {action}`, not {want}")
                jump = _minor_jump(node.get("from_version"), cluster.get("target_version") or target)
                if jump > 1:
                    verdict.fail(
                        f"I3: plan moves the API server of {cluster_id}/{node['node_id']} {jump} minors at once "
                        f"({node.get('from_version')} -> {cluster.get('target_version') or target})"
                    )
            for node in cluster["workers"]:
                world.roles[(cluster_id, node["node_id"])] = "worker"
                _plan_version(world, cluster_id, node)


def _plan_version(world: _World, cluster_id: str, node: dict[str, Any]) -> None:
    if node.get("from_version"):
        world.kubelet.setdefault((cluster_id, node["node_id"]), node["from_version"])


def _minor_jump(before: str | None, after: str | None) -> int:
    a, b = minor(before), minor(after)
    if a is None or b is None or a[0] != b[0]:
        return 0
    return abs(b[1] - a[1])


def _cluster_moved(verdict: Verdict, world: _World, data: dict[str, Any]) -> None:
    key = (data["rollout_id"], data["cluster_id"])
    world.cluster_state[key] = data["to"]
    if data["to"] == "Frozen":
        world.cluster_frozen.setdefault(key, _time(data) or 0.0)
    else:
        world.cluster_frozen.pop(key, None)
    busy = sum(1 for s in world.cluster_state.values() if s in _IN_PROGRESS)
    verdict.max_busy_clusters = max(verdict.max_busy_clusters, busy)
    if busy > world.max_clusters:
        verdict.fail(f"I1: {busy} clusters in progress at once (max {world.max_clusters})")


def _out_of_service(world: _World, rollout: str, cluster: str) -> set[str]:
    return {
        k[2]
        for k, s in world.state.items()
        if k[:2] == (rollout, cluster) and s not in _IN_SERVICE and k not in world.given_back
    }


def _node_moved(verdict: Verdict, world: _World, data: dict[str, Any]) -> None:
    rollout, cluster, node = data["rollout_id"], data["cluster_id"], data["node_id"]
    key = (rollout, cluster, node)
    before, after = world.state.get(key, "Pending"), data["to"]
    where = f"{cluster}/{node}"
    forward = data.get("direction", "forward") == "forward"
    # A retry gives a new attempt to a Failed node, and to one wound down (given back uncordoned, never upgraded,
    # when another node of its cluster failed): neither attempt took its steps to the target.
    retried = data.get("reason") == "Retry" and (before == "Failed" or key in world.wound_down)
    moved_back = before in FORWARD and after in FORWARD and FORWARD.index(after) < FORWARD.index(before)
    if forward and not retried and moved_back:
        verdict.fail(f"I4: {where} moved back {before} -> {after} without a rollback")
    if forward and not retried and before == "Failed" and after != "Failed":
        verdict.fail(f"I4: {where} left Failed for {after} without a retry or rollback")
    if after == "Cordoned":
        world.cordoned.add(key)
    if after == "Uncordoned" and key not in world.cordoned:
        verdict.fail(f"I9: {where} uncordoned but never cordoned by this rollout")
    if after == "Upgraded" and forward and world.roles.get((cluster, node)) == "worker":
        waiting = [
            n for (c, n), role in world.roles.items()
            if c == cluster and role == "control-plane"
            and world.state.get((rollout, c, n)) not in ("Verified", "Uncordoned")
        ]  # fmt: skip
        if waiting:
            verdict.fail(f"I2: worker {where} upgraded before control plane {waiting} was at the target")
    world.given_back.discard(key)
    if after == "Uncordoned" and forward and before not in ("Verified", "Uncordoned"):
        world.wound_down.add(key)
    elif after != "Uncordoned":
        world.wound_down.discard(key)
    world.state[key] = after
    if data.get("kubelet_version"):
        _kubelet_moved(verdict, world, cluster, node, data["kubelet_version"])
    out = _out_of_service(world, rollout, cluster)
    verdict.max_unavailable_seen[cluster] = max(verdict.max_unavailable_seen.get(cluster, 0), len(out))
    if len(out) > world.max_unavailable:
        verdict.fail(f"I1: {len(out)} nodes of {cluster} out of service at once (max {world.max_unavailable})")
    cp_out = [
        n for n in out if world.roles.get((cluster, n)) == "control-plane" and world.state[(*key[:2], n)] != "Failed"
    ]
    if len(cp_out) > 1:
        verdict.fail(f"I2: {len(cp_out)} control-plane nodes of {cluster} out at once")


def _kubelet_moved(verdict: Verdict, world: _World, cluster: str, node: str, version: str) -> None:
    """A node's kubelet (and on a control-plane node its API server, which kubeadm moves with it) changed."""
    before = world.kubelet.get((cluster, node))
    world.kubelet[(cluster, node)] = version
    role = world.roles.get((cluster, node))
    if role == "control-plane" and _minor_jump(before, version) > 1:
        verdict.fail(f"I3: API server of {cluster}/{node} moved {before} -> {version}, more than one minor")
    api = [v for (c, n), v in world.kubelet.items() if c == cluster and world.roles.get((c, n)) == "control-plane"]
    if not api:
        return
    oldest = min(api, key=lambda v: minor(v) or (0, 0))
    for (c, n), kubelet in world.kubelet.items():
        if c == cluster and world.roles.get((c, n)) == "worker":
            why = kubelet_skew(kubelet, oldest)
            if why is not None:
                verdict.fail(f"I3: {c}/{n}: {why}")


def _reported(verdict: Verdict, world: _World, data: dict[str, Any]) -> None:
    rollout, cluster, node = data["rollout_id"], data["cluster_id"], data["node_id"]
    key = (rollout, cluster, node)
    outcome, step, command = data["outcome"], data["step"], data["command_id"]
    if command not in world.command_started and outcome != "refused":
        world.command_started.add(command)
        newest = world.epochs.get(key, 0)
        epoch = int(data.get("epoch", 0))
        if epoch < newest:
            verdict.fail(f"I6: {cluster}/{node} took {step} at epoch {epoch} after answering epoch {newest}")
        if step == "cordon":
            _cordon_began(verdict, world, data)
    if outcome != "refused":
        world.epochs[key] = max(world.epochs.get(key, 0), int(data.get("epoch", 0)))
    if outcome != "succeeded":
        return
    if not data.get("replayed"):
        world.succeeded[command] += 1
        if world.succeeded[command] > 1:
            verdict.fail(f"I4: command {command} ({step} on {node}) ran twice")
    if step == "cordon":
        (world.found_cordoned.add if data.get("was_cordoned") else world.found_cordoned.discard)(key)
    elif step == "uncordon":
        if key in world.found_cordoned:
            verdict.fail(f"I9: {cluster}/{node} uncordoned although someone else had cordoned it")
        if world.state.get(key) == "Failed":
            world.given_back.add(key)
    if data.get("kubelet_version") and step in ("upgrade", "verify", "rollback"):
        _kubelet_moved(verdict, world, cluster, node, data["kubelet_version"])


def _cordon_began(verdict: Verdict, world: _World, data: dict[str, Any]) -> None:
    """A cordon started on the agent: I1 (room in the budget) and I7 (nothing frozen) when it was decided."""
    rollout, cluster, node = data["rollout_id"], data["cluster_id"], data["node_id"]
    at = _time(data)
    if at is not None:
        at -= float(data.get("duration_s") or 0.0)
    frozen = [world.rollout_frozen.get(rollout), world.cluster_frozen.get((rollout, cluster))]
    since = min((t for t in frozen if t is not None), default=None)
    if since is not None and (at is None or at > since + world.slack_s):
        verdict.fail(f"I7: cordon of {cluster}/{node} began while rollout {rollout} was frozen")
    if world.state.get((rollout, cluster, node), "Pending") != "Pending":
        return  # already out (a retry or a rollback): no new disruption
    out = _out_of_service(world, rollout, cluster)
    down = {
        n
        for (c, n), t in world.down_since.items()
        if c == cluster and n != node and (at is None or t + world.slack_s < at)
    }
    after = out | down | {node}
    if len(after) > world.max_unavailable:
        verdict.fail(
            f"I1: cordon of {cluster}/{node} began with {sorted(out | down)} already unavailable "
            f"(max {world.max_unavailable})"
        )


def final_states(events: list[Event]) -> dict[tuple[str, str], tuple[str, str | None]]:
    """(cluster, node) -> (last step state, last kubelet version reported by the orchestrator)."""
    last: dict[tuple[str, str], tuple[str, str | None]] = {}
    versions: dict[tuple[str, str], str | None] = defaultdict(lambda: None)
    for _subject, schema, data in events:
        if schema.startswith("upgrade.NodeStepStateChanged/"):
            key = (data["cluster_id"], data["node_id"])
            versions[key] = data.get("kubelet_version") or versions[key]
            last[key] = (data["to"], versions[key])
    return last
