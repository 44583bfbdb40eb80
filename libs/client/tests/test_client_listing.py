"""Every read command as kubectl prints: `-o table|wide|json|yaml|name`, empty lists said on stderr, REGION from
labels. Through the CLI (CliRunner), with the service calls replaced by canned replies."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from flotilla_client.cli import cluster_refs, fleet, health, local, nodes, subscriptions, tokens, upgrade
from flotilla_client.cli.main import cli
from flotilla_client.discovery import ServiceRecord
from flotilla_contracts.v1 import heartbeat as hb
from flotilla_contracts.v1 import registration as reg
from flotilla_contracts.v1 import scheduler as sched
from flotilla_contracts.v1 import upgrade as up
from flotilla_contracts.v1 import upgrade_status as st
from flotilla_contracts.v1.agent import NodeFacts
from flotilla_contracts.v1.common import NodeRole

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
FORMATS = ("table", "wide", "json", "yaml", "name")


def cluster(cluster_id: str, labels: dict[str, str] | None = None, region: str = "") -> reg.ClusterInfo:
    identity = reg.ClusterIdentity(uid="u-" + cluster_id, name=cluster_id, kubernetes_version="v1.30.2", region=region)
    return reg.ClusterInfo(
        cluster_id=cluster_id,
        identity=identity,
        state=reg.ClusterState.APPROVED,
        labels=labels or {},
        node_count=1,
        joined_at=T0,
        updated_at=T0,
    )


def node(cluster_id: str, node_id: str) -> reg.NodeInfo:
    facts = NodeFacts(node_id=node_id, node_name=node_id, role=NodeRole.WORKER, kubelet_version="v1.30.2")
    return reg.NodeInfo(cluster_id=cluster_id, facts=facts, added_at=T0, updated_at=T0)


def rollout(rollout_id: str) -> st.RolloutSummary:
    return st.RolloutSummary(
        rollout_id=rollout_id, target_version="v1.30.4", state=st.RolloutState.RUNNING, created_at=T0, updated_at=T0
    )


def planned_node(node_id: str, role: NodeRole, order: int) -> up.PlannedNode:
    return up.PlannedNode(node_id=node_id, node_name=node_id, role=role, order=order, from_version="v1.30.2")


PLAN = up.UpgradePlan(
    target_version="v1.30.4",
    feasible=True,
    waves=[
        up.PlannedWave(
            index=0,
            name="canary",
            clusters=[
                up.PlannedCluster(
                    cluster_id="c-1",
                    from_version="v1.30.2",
                    target_version="v1.30.4",
                    control_plane=[planned_node("cp-1", NodeRole.CONTROL_PLANE, 0)],
                    workers=[planned_node("w-1", NodeRole.WORKER, 1), planned_node("w-2", NodeRole.WORKER, 2)],
                )
            ],
        )
    ],
)


class Replies:
    """Stands in for `call` in every command module: answers each verb with a canned reply."""

    def __init__(self, **lists: list[Any]) -> None:
        clusters: list[reg.ClusterInfo] = lists.get("clusters", [])
        self.replies: dict[str, Any] = {
            "clusters.list": reg.ListClustersReply(clusters=clusters),
            "clusters.get": reg.ClusterReply(cluster=cluster("c-1"), nodes=[node("c-1", "n-1")]),
            "health.clusters": hb.ClustersHealthReply(clusters=[]),
            "nodes.list": reg.ListNodesReply(nodes=lists.get("nodes", [])),
            "health.nodes": hb.NodesHealthReply(nodes=[]),
            "tokens.list": reg.ListTokensReply(tokens=lists.get("tokens", [])),
            "subscriptions.list": sched.ListSubscriptionsReply(subscriptions=lists.get("subscriptions", [])),
            "upgrade.list": st.ListRolloutsReply(rollouts=lists.get("rollouts", [])),
            "health.summary": hb.FleetHealthReply(
                worst_clusters=[hb.ClusterHealthInfo(cluster_id="c-2", state=hb.ClusterHealth.DEGRADED)]
            ),
            "upgrade.status": st.RolloutStatusReply(
                rollout=rollout("r-1"), spec=up.RolloutSpec(target_version="v1.30.4")
            ),
            "upgrade.plan": up.PlanReply(plan=PLAN),
            "subscriptions.get": sched.GetSubscriptionReply(
                subscription=sched.SubscriptionInfo(
                    spec=sched.SubscriptionSpec(name="web", manifests=[{"kind": "ConfigMap"}]),
                    generation=1,
                    created_at=T0,
                    updated_at=T0,
                )
            ),
        }

    def __call__(self, _obj: Any, _service: Any, verb: str, _message: Any, _reply_type: Any, **_: Any) -> Any:
        return self.replies[verb]


def invoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, replies: Replies, *args: str) -> Result:
    for module in (cluster_refs, fleet, health, nodes, subscriptions, tokens, upgrade):
        monkeypatch.setattr(module, "call", replies)
    records = [ServiceRecord(name="registration", id="abc123", version="0.1.0", uptime_s=5.0)]
    monkeypatch.setattr(local, "run", lambda _factory: records)
    argv = ["--state-dir", str(tmp_path), "--server", "nats://127.0.0.1:1", *args]
    return CliRunner().invoke(cli, argv)


READ_COMMANDS = [
    ("clusters", "list"),
    ("clusters", "get", "c-1"),
    ("nodes", "list"),
    ("token", "list"),
    ("subscriptions", "list"),
    ("subscriptions", "get", "web"),
    ("upgrade", "list"),
    ("upgrade", "status", "r-1"),
    ("upgrade", "plan", "--to", "v1.30.4"),
    ("health",),
    ("status",),
]
FULL = Replies(
    clusters=[cluster("c-1")],
    nodes=[node("c-1", "n-1")],
    tokens=[reg.JoinTokenInfo(token_id="t-1", state=reg.TokenState.ACTIVE, created_at=T0)],
    subscriptions=[
        sched.SubscriptionSummary(name="web", generation=1, strategy=sched.Strategy.REPLICATE, updated_at=T0)
    ],
    rollouts=[rollout("r-1")],
)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("command", READ_COMMANDS, ids=" ".join)
def test_every_read_command_prints_every_format(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: tuple[str, ...], fmt: str
) -> None:
    result = invoke(tmp_path, monkeypatch, FULL, *command, "-o", fmt)
    assert result.exit_code == 0, result.output
    out = result.stdout
    if fmt == "json":
        json.loads(out)
    elif fmt == "yaml":
        assert yaml.safe_load(out) is not None
    elif fmt == "name":
        lines = out.splitlines()
        assert lines and all(re.fullmatch(r"[a-z]+/\S+", line) for line in lines), out
    else:
        assert out.strip()


@pytest.mark.parametrize(
    "command",
    [("clusters", "list"), ("nodes", "list"), ("token", "list"), ("upgrade", "list"), ("subscriptions", "list")],
    ids=" ".join,
)
def test_wide_adds_columns_to_a_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: tuple[str, ...]) -> None:
    table = invoke(tmp_path, monkeypatch, FULL, *command).stdout.splitlines()[0].split("  ")
    wide = invoke(tmp_path, monkeypatch, FULL, *command, "-o", "wide").stdout.splitlines()[0].split("  ")
    headers = [h.strip() for h in table if h.strip()]
    wide_headers = [h.strip() for h in wide if h.strip()]
    assert set(headers) < set(wide_headers), (headers, wide_headers)


def test_name_prints_kind_and_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    replies = Replies(clusters=[cluster("c-1"), cluster("c-2")], rollouts=[rollout("r-9")], nodes=[node("c-1", "n-1")])
    assert (
        invoke(tmp_path, monkeypatch, replies, "clusters", "list", "-o", "name").stdout == "cluster/c-1\ncluster/c-2\n"
    )
    assert invoke(tmp_path, monkeypatch, replies, "upgrade", "list", "-o", "name").stdout == "rollout/r-9\n"
    assert invoke(tmp_path, monkeypatch, replies, "nodes", "list", "-o", "name").stdout == "node/c-1/n-1\n"


@pytest.mark.parametrize(
    ("command", "said"),
    [
        (("clusters", "list"), "No clusters found."),
        (("nodes", "list"), "No nodes found."),
        (("token", "list"), "No tokens found."),
        (("upgrade", "list"), "No rollouts found."),
        (("subscriptions", "list"), "No subscriptions found."),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, tuple) else v,
)
def test_an_empty_list_says_so_on_stderr_and_exits_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: tuple[str, ...], said: str
) -> None:
    for fmt in ("table", "wide", "name"):
        result = invoke(tmp_path, monkeypatch, Replies(), *command, "-o", fmt)
        assert (result.exit_code, result.stdout, result.stderr.strip()) == (0, "", said)
    result = invoke(tmp_path, monkeypatch, Replies(), *command, "-o", "json")
    assert (result.exit_code, json.loads(result.stdout)) == (0, [])


def test_region_comes_from_the_region_label_then_the_topology_label_then_the_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    replies = Replies(
        clusters=[
            cluster("c-1", {"region": "eu"}, region="agent-says"),
            cluster("c-2", {"topology.kubernetes.io/region": "us-east-1"}),
            cluster("c-3", region="ap"),
            cluster("c-4"),
        ]
    )
    lines = invoke(tmp_path, monkeypatch, replies, "clusters", "list").stdout.splitlines()
    at = lines[0].index("REGION")
    assert [line[at:].split()[0] for line in lines[1:]] == ["eu", "us-east-1", "ap", "-"]
