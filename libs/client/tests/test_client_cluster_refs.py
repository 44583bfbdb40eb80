"""Clusters named by name where IDs are taken, and `upgrade status --nodes`, through the CLI (CliRunner) with the
service calls replaced by a recorder: what is sent, what is refused, what is printed."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner, Result

from flotilla_client.cli import cluster_refs, fleet, nodes, subscriptions, upgrade
from flotilla_client.cli.cluster_refs import AmbiguousName, match_cluster
from flotilla_client.cli.main import cli
from flotilla_client.errors import ClientError
from flotilla_contracts.v1 import registration as reg
from flotilla_contracts.v1 import upgrade as up
from flotilla_contracts.v1 import upgrade_status as st
from flotilla_contracts.v1.agent import StepKind
from flotilla_contracts.v1.common import NodeRole

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def cluster(cluster_id: str, name: str, state: reg.ClusterState = reg.ClusterState.APPROVED) -> reg.ClusterInfo:
    identity = reg.ClusterIdentity(uid="u-" + cluster_id, name=name, kubernetes_version="v1.30.2")
    return reg.ClusterInfo(cluster_id=cluster_id, identity=identity, state=state, joined_at=T0, updated_at=T0)


FLEET = [
    cluster("sim-0001-1a2b3c", "sim-0001"),
    cluster("old-0001-999999", "sim-0001", reg.ClusterState.DEREGISTERED),
    cluster("twin-aaaaaa", "twin"),
    cluster("twin-bbbbbb", "twin", reg.ClusterState.PENDING),
    cluster("gone-111111", "gone", reg.ClusterState.DEREGISTERED),
    cluster("gone-222222", "gone", reg.ClusterState.DEREGISTERED),
]


def test_an_id_is_itself_and_a_name_is_its_member() -> None:
    assert match_cluster("twin-bbbbbb", FLEET) == "twin-bbbbbb"
    assert match_cluster("sim-0001", FLEET) == "sim-0001-1a2b3c"  # the member, not the deregistered namesake
    assert match_cluster("nobody", FLEET) is None


@pytest.mark.parametrize(("name", "ids"), [("twin", ["twin-aaaaaa", "twin-bbbbbb"]), ("gone", ["gone-111111"])])
def test_an_ambiguous_name_lists_every_candidate(name: str, ids: list[str]) -> None:
    with pytest.raises(AmbiguousName) as raised:
        match_cluster(name, FLEET)
    assert all(i in str(raised.value) for i in ids) and "give one of these IDs" in str(raised.value)


class Registration:
    """Stands in for `call`: registration knows FLEET by ID only (as the service does); records every verb."""

    def __init__(self, status: st.RolloutStatusReply | None = None) -> None:
        self.sent: list[tuple[str, Any]] = []
        self.status = status

    def __call__(self, _obj: Any, _service: Any, verb: str, message: Any, _reply_type: Any, **_: Any) -> Any:
        self.sent.append((verb, message))
        if verb == "clusters.get":
            found = [c for c in FLEET if c.cluster_id == message.cluster_id]
            if not found:
                raise ClientError("not_found", f"no cluster {message.cluster_id}")
            return reg.ClusterReply(cluster=found[0])
        if verb == "clusters.list":
            return reg.ListClustersReply(clusters=FLEET)
        if verb == "nodes.list":
            return reg.ListNodesReply(nodes=[])
        if verb == "upgrade.status":
            return self.status
        return st.RolloutReply(rollout=summary())


def invoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recorder: Registration, *args: str) -> Result:
    for module in (cluster_refs, fleet, nodes, subscriptions, upgrade):
        monkeypatch.setattr(module, "call", recorder)
    return CliRunner().invoke(cli, ["--state-dir", str(tmp_path), "--server", "nats://127.0.0.1:1", *args])


def test_nodes_list_takes_a_cluster_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Registration()
    result = invoke(tmp_path, monkeypatch, recorder, "nodes", "list", "--cluster", "sim-0001")
    assert result.exit_code == 0, result.output
    [nodes_list] = [message for verb, message in recorder.sent if verb == "nodes.list"]
    assert nodes_list.cluster_id == "sim-0001-1a2b3c"


@pytest.mark.parametrize(
    "command",
    [
        ("clusters", "label", "sim-0001", "tier=gold"),
        ("upgrade", "skip", "r-1", "--cluster", "sim-0001"),
        ("upgrade", "retry", "r-1", "--cluster", "sim-0001"),
    ],
    ids=" ".join,
)
def test_commands_taking_a_cluster_send_its_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: tuple[str, ...]
) -> None:
    recorder = Registration()
    invoke(tmp_path, monkeypatch, recorder, *command)
    verb, message = recorder.sent[-1]
    assert verb.endswith(command[1]) and message.cluster_id == "sim-0001-1a2b3c"


def test_an_ambiguous_name_is_refused_with_the_candidates_and_nothing_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = Registration()
    result = invoke(tmp_path, monkeypatch, recorder, "clusters", "deregister", "twin")
    assert result.exit_code == 2
    assert "twin-aaaaaa (Approved" in result.stderr and "twin-bbbbbb (Pending" in result.stderr
    assert [verb for verb, _ in recorder.sent] == ["clusters.get", "clusters.list"]


def test_an_unknown_name_gets_the_services_not_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = invoke(tmp_path, monkeypatch, Registration(), "clusters", "get", "nobody")
    assert result.exit_code == 1 and "not_found: no cluster nobody" in result.stderr


def summary() -> st.RolloutSummary:
    return st.RolloutSummary(
        rollout_id="r-1", target_version="v1.30.4", state=st.RolloutState.RUNNING, created_at=T0, updated_at=T0
    )


def status_with_nodes() -> st.RolloutStatusReply:
    nodes = [
        st.NodeStatus(
            node_id="n-1",
            node_name="sim-0001-n01",
            role=NodeRole.CONTROL_PLANE,
            state=st.NodeStepState.UNCORDONED,
            from_version="v1.30.2",
            current_version="v1.30.4",
            attempts=1,
        ),
        st.NodeStatus(
            node_id="n-2",
            node_name="sim-0001-n02",
            role=NodeRole.WORKER,
            state=st.NodeStepState.FAILED,
            step_in_flight=StepKind.DRAIN,
            from_version="v1.30.2",
            current_version="v1.30.2",
            attempts=2,
            failure="drain timed out: pdb web",
        ),
    ]
    cluster_status = st.ClusterStatus(
        cluster_id="sim-0001-1a2b3c",
        wave=0,
        state=st.ClusterRolloutState.FAILED,
        target_version="v1.30.4",
        nodes_total=2,
        nodes=nodes,
    )
    return st.RolloutStatusReply(
        rollout=summary(), spec=up.RolloutSpec(target_version="v1.30.4"), clusters=[cluster_status]
    )


def test_status_nodes_prints_a_row_per_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Registration(status_with_nodes())
    result = invoke(tmp_path, monkeypatch, recorder, "upgrade", "status", "r-1", "--nodes")
    assert result.exit_code == 0, result.output
    assert recorder.sent[-1][1].include_nodes
    lines = result.stdout.splitlines()
    header = next(line for line in lines if "NODE" in line).split()
    assert header == ["CLUSTER", "NODE", "ROLE", "STATE", "STEP", "ATTEMPT", "VERSION", "FAILURE"]
    row = next(line for line in lines if "sim-0001-n02" in line)
    assert row.split()[2:7] == ["worker", "Failed", "drain", "2", "v1.30.2"] and "drain timed out: pdb web" in row
    upgraded = next(line for line in lines if "sim-0001-n01" in line)
    assert "v1.30.2 -> v1.30.4" in upgraded


def test_status_without_nodes_asks_for_none_and_prints_no_node_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = Registration(msgspec.structs.replace(status_with_nodes(), clusters=[]))
    result = invoke(tmp_path, monkeypatch, recorder, "upgrade", "status", "r-1")
    assert result.exit_code == 0, result.output
    assert not recorder.sent[-1][1].include_nodes and "NODE" not in result.stdout
