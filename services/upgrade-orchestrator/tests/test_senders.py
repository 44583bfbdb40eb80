"""Step reports are authorized by sender: the rule on plain values, then forged reports against the engine."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import msgspec
import pytest
from orchestrator_harness import Sim

from flotilla_contracts import catalogue
from flotilla_contracts.v1.agent import NodeStepCommand, NodeStepReported, StepKind, StepOutcome
from flotilla_contracts.v1.security import RefusalReason
from flotilla_contracts.v1.upgrade import RolloutSpec, WavesSpec
from flotilla_contracts.v1.upgrade_status import NodeStepState, RolloutState
from flotilla_runtime.integrity import StateRefused
from flotilla_upgrade_orchestrator.model import command_id
from flotilla_upgrade_orchestrator.senders import Sender, check_report, sender_of

REFUSED = "security.MemberRefused/v1"


def report(cluster: str = "x", node: str = "x-n1", outcome: StepOutcome = StepOutcome.FAILED) -> NodeStepReported:
    return NodeStepReported(
        command_id="k123",
        rollout_id="r1",
        epoch=1,
        cluster_id=cluster,
        node_id=node,
        node_name=node,
        step=StepKind.CORDON,
        outcome=outcome,
        occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


def subject(cluster: str, node: str) -> str:
    return catalogue.subject_for(NodeStepReported, cluster_id=cluster, node_id=node)


# --- the rule ----------------------------------------------------------------------------------------------


def test_the_sender_is_read_from_the_subject() -> None:
    assert sender_of("fleet.v1.evt.node-step.x.x-n1.reported") == Sender("x", "x-n1")
    assert sender_of("fleet.v1.evt.node-step.x.reported") is None


def test_a_node_reporting_on_its_own_command_is_accepted() -> None:
    me = Sender("x", "x-n1")
    assert check_report(me, report(), sent_to=me) is None


@pytest.mark.parametrize(("cluster", "node"), [("v", "x-n1"), ("x", "x-n2"), ("v", "v-n1")])
def test_a_body_naming_another_cluster_or_node_than_its_subject_is_refused(cluster: str, node: str) -> None:
    me = Sender("x", "x-n1")
    refusal = check_report(me, report(cluster, node), sent_to=me)
    assert refusal is not None and refusal.reason is RefusalReason.SUBJECT_BODY_MISMATCH
    assert f"names {cluster}/{node}" in refusal.detail


@pytest.mark.parametrize("sent_to", [None, Sender("v", "v-n1"), Sender("x", "x-n2"), Sender("v", "x-n1")])
@pytest.mark.parametrize("outcome", [StepOutcome.FAILED, StepOutcome.SUCCEEDED, StepOutcome.ACCEPTED])
def test_a_report_on_a_command_sent_elsewhere_or_never_is_refused(sent_to: Sender | None, outcome: StepOutcome) -> None:
    refusal = check_report(Sender("x", "x-n1"), report(outcome=outcome), sent_to=sent_to)
    assert refusal is not None and refusal.reason is RefusalReason.NOT_OWN_COMMAND
    assert "k123" in refusal.detail and "x/x-n1" in refusal.detail


def test_command_ids_are_keyed_and_deterministic() -> None:
    args = ("r1", "v", "v-n1", StepKind.UPGRADE, 1, "forward")
    key = bytes(range(32))
    assert command_id(key, *args) == command_id(key, *args)  # the same after a restart (same key)
    assert command_id(key, *args) != command_id(bytes(32), *args)
    unkeyed = "s" + hashlib.sha256(b"r1/v/v-n1/upgrade/1/forward").hexdigest()[:40]
    assert command_id(key, *args) != unkeyed


# --- forged reports against the engine -----------------------------------------------------------------------


def _first_command(sim: Sim, cluster: str) -> NodeStepCommand:
    return next(c for c in sim.queue if c.cluster_id == cluster)


def _forge(command: NodeStepCommand, outcome: StepOutcome, cluster: str, node: str) -> NodeStepReported:
    return NodeStepReported(
        command_id=command.command_id,
        rollout_id=command.rollout_id,
        epoch=command.epoch,
        cluster_id=cluster,
        node_id=node,
        node_name=node,
        step=command.step,
        outcome=outcome,
        kubelet_version="v1.30.4",
        occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


def test_another_clusters_forged_reports_change_nothing_and_are_reported_once(sim: Sim) -> None:
    sim.add_cluster("v", cps=1, workers=2)
    sim.add_cluster("x", cps=1, workers=2)
    rid = sim.start(
        RolloutSpec(target_version="v1.30.4", waves=WavesSpec(canary_clusters=2), max_concurrent_clusters=2)
    )
    victim = _first_command(sim, "v")
    own = _first_command(sim, "x")
    rollout = sim.engine.rollouts[rid]
    before = msgspec.json.encode(rollout.clusters["v"])
    for outcome in (StepOutcome.FAILED, StepOutcome.SUCCEEDED, StepOutcome.FAILED):
        # X on its own node's subject, body about itself, with V's command id
        sim.deliver(_forge(victim, outcome, "x", own.node_id), subject=subject("x", own.node_id))
    # X's body naming V's node, on X's subject
    sim.deliver(_forge(victim, StepOutcome.FAILED, "v", victim.node_id), subject=subject("x", own.node_id))
    # one node of X answering the command of another node of X
    other = "x-w2" if own.node_id != "x-w2" else "x-w1"
    sim.deliver(_forge(own, StepOutcome.FAILED, "x", other), subject=subject("x", other))

    assert msgspec.json.encode(rollout.clusters["v"]) == before  # nothing moved on V
    assert rollout.state is RolloutState.RUNNING and not rollout.failures
    assert sim.ledger.totals[RefusalReason.NOT_OWN_COMMAND] == 4
    assert sim.ledger.totals[RefusalReason.SUBJECT_BODY_MISMATCH] == 1
    refused = [(s, b) for s, schema, b in sim.events if schema == REFUSED]
    assert [(s, b["reason"], b["cluster_id"]) for s, b in refused] == [
        ("fleet.v1.evt.security.upgrade-orchestrator.x.refused", "not_own_command", "x"),
        ("fleet.v1.evt.security.upgrade-orchestrator.x.refused", "subject_body_mismatch", "x"),
    ]
    sim.run()
    assert rollout.state is RolloutState.SUCCEEDED, rollout.rec.message
    assert all(n.version == "v1.30.4" and not n.cordoned_by for n in sim.nodes.values())
    # After the fact (the command settled, only the database knows it): still refused, still no change.
    sim.deliver(_forge(victim, StepOutcome.FAILED, "x", own.node_id), subject=subject("x", own.node_id))
    assert sim.ledger.totals[RefusalReason.NOT_OWN_COMMAND] == 5
    assert rollout.state is RolloutState.SUCCEEDED and not rollout.failures
    # The node's own late duplicate is no refusal (and no change either, I4).
    sim.deliver(_forge(victim, StepOutcome.FAILED, "v", victim.node_id))
    assert sim.ledger.totals[RefusalReason.NOT_OWN_COMMAND] == 5
    assert all(n.state is NodeStepState.UNCORDONED for n in rollout.clusters["v"].nodes)


def test_commands_sent_under_unkeyed_ids_before_the_upgrade_still_get_their_reports(sim: Sim) -> None:
    sim.add_cluster("v", cps=1, workers=2)
    rid = sim.start(RolloutSpec(target_version="v1.30.4"))
    sent = sim.queue.pop(0)
    old = "s" + hashlib.sha256(f"{rid}/v/{sent.node_id}/cordon/1/forward".encode()).hexdigest()[:40]

    def as_before(tx: object) -> None:  # what a database written by the previous version holds
        node = next(n for n in sim.engine.rollouts[rid].clusters["v"].nodes if n.node_id == sent.node_id)
        node.command_id = old
        sim.engine.touch_node(sim.engine.rollouts[rid], sim.engine.rollouts[rid].clusters["v"], node)
        sim.conn.execute("UPDATE commands SET command_id = ? WHERE command_id = ?", (old, sent.command_id))

    sim.work(as_before)
    sim.crash()
    sim.queue.insert(0, msgspec.structs.replace(sent, command_id=old))
    sim.run()
    assert sim.engine.rollouts[rid].state is RolloutState.SUCCEEDED
    assert sim.ledger.totals[RefusalReason.NOT_OWN_COMMAND] == 0


def test_a_database_without_its_command_key_is_refused_not_rekeyed(sim: Sim) -> None:
    sim.add_cluster("v")
    sim.conn.execute("DELETE FROM secrets")
    sim.crash()
    with pytest.raises(StateRefused, match="no command-id key"):
        sim.tick()
