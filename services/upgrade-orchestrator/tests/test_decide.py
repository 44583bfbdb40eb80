"""decide() under random commands, reports and health: the property test of the one state machine.

The stateful model of test_model.py (reports duplicated, reordered and delayed, crashes, ticks, failures,
pause, resume, retry, abort) plus skip, rollback, approval and cluster health, with every decision the
engine asks for checked as it is made (`decide` is patched with a checking wrapper):
- decide never changes the view it is shown (pure), and a refusal comes alone;
- an Issue goes to a node with nothing in flight, at most one per node and decision;
- a disruptive step (cordon, drain, upgrade, rollback) never while the rollout is paused or frozen or its
  cluster frozen (I7);
- a cordon never takes the nodes really down (the simulated fleet's truth plus cordons on the way) beyond
  max_unavailable (I1), and a forward worker's never before every control plane runs the target (I2).
After every step a Running or RollingBack rollout with nothing in flight moves or says what it waits for (stall.waits);
at the end, faults removed, it finishes, and the independent oracle (tests/e2e/rollout_invariants.py, which
shares no code with the orchestrator) finds no violation of I1-I10 in the event log.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from unittest import mock

import msgspec
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import initialize, invariant, precondition, rule, run_state_machine_as_test
from orchestrator_harness import Sim
from rollout_invariants import check
from test_model import RolloutModel

from flotilla_contracts.v1.agent import NodeStepReported, StepKind
from flotilla_contracts.v1.common import NodeRole
from flotilla_contracts.v1.heartbeat import ClusterHealth, NodeHealth
from flotilla_contracts.v1.upgrade import (
    ApproveWaveRequest,
    FailureBudget,
    RollbackRequest,
    RolloutSpec,
    SkipClusterRequest,
    WavesSpec,
)
from flotilla_contracts.v1.upgrade_status import ClusterRolloutState, Direction, RolloutState
from flotilla_upgrade_orchestrator import applier, control, recovery, stall
from flotilla_upgrade_orchestrator.decide import Decision, View, decide
from flotilla_upgrade_orchestrator.decide.facts import Advance, Fact
from flotilla_upgrade_orchestrator.decide.intents import Issue, Refuse
from flotilla_upgrade_orchestrator.model import Rollout

TARGET = "v1.30.4"
DISRUPTIVE = {StepKind.CORDON, StepKind.DRAIN, StepKind.UPGRADE, StepKind.ROLLBACK}
MAY_DISRUPT = {RolloutState.RUNNING, RolloutState.AWAITING_APPROVAL, RolloutState.ROLLING_BACK}


def snapshot(rollout: Rollout) -> bytes:
    return msgspec.json.encode([rollout.rec, list(rollout.clusters.values()), rollout.failures])


class DecideModel(RolloutModel):
    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[str, str, dict[str, Any]]] = []
        self.decisions = 0
        self.spec: RolloutSpec | None = None
        self._patch = mock.patch.object(applier, "decide", self.checked_decide)
        self._patch.start()
        self._wrap_sim(self.sim)

    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            self._patch.stop()

    # --- recording the event log for the oracle -------------------------------------------------------

    def _wrap_sim(self, sim: Sim) -> None:
        publish, deliver, node_health = sim.publish, sim.deliver, sim.node_health

        def publish_and_log() -> None:
            seen = len(sim.events)
            publish()
            self.log += sim.events[seen:]

        seen: set[bytes] = set()

        def deliver_and_log(report: NodeStepReported, subject: str = "") -> None:
            body = msgspec.json.encode(report)
            if body not in seen:  # a redelivery is the same message again, not a second execution
                seen.add(body)
                self.log.append(("", "agent.NodeStepReported/v1", msgspec.to_builtins(report)))
            deliver(report, subject)

        def node_health_and_log(cluster_id: str, node_id: str, to: NodeHealth) -> None:
            data = {"cluster_id": cluster_id, "node_id": node_id, "to": to.value, "occurred_at": sim.now.isoformat()}
            self.log.append(("", "heartbeat.NodeHealthChanged/v1", data))
            node_health(cluster_id, node_id, to)

        sim.publish, sim.deliver, sim.node_health = publish_and_log, deliver_and_log, node_health_and_log  # type: ignore[method-assign]

    # --- every decision, checked as it is made ------------------------------------------------------------

    def checked_decide(self, view: View, fact: Fact, now: datetime) -> Decision:
        before = snapshot(view.rollout)
        decision = decide(view, fact, now)
        assert snapshot(view.rollout) == before, f"decide changed the view it was shown ({fact!r})"
        self.decisions += 1
        refusals = [i for i in decision.intents if isinstance(i, Refuse)]
        assert not refusals or len(decision.intents) == 1, f"a refusal with moves: {decision.intents}"
        issued = [i for i in decision.intents if isinstance(i, Issue)]
        assert len({(i.cluster_id, i.node_id) for i in issued}) == len(issued), f"two steps for one node: {issued}"
        for intent in issued:
            self._check_issue(view, intent, issued)
        return decision

    def _check_issue(self, view: View, intent: Issue, issued: list[Issue]) -> None:
        rollout = view.rollout
        cluster = rollout.clusters[intent.cluster_id]
        node = next(n for n in cluster.nodes if n.node_id == intent.node_id)
        assert node.in_flight is None, f"I4: {intent} while {node.in_flight} is in flight"
        if intent.step in DISRUPTIVE:
            assert rollout.state in MAY_DISRUPT and rollout.rec.freeze is None, f"I7: {intent} in {rollout.state}"
            assert cluster.state is not ClusterRolloutState.FROZEN, f"I7: {intent} in a frozen cluster"
        if intent.step is not StepKind.CORDON:
            return
        truth = {k[1]: n for k, n in self.sim.nodes.items() if k[0] == intent.cluster_id}
        down = {nid for nid, n in truth.items() if n.unschedulable or n.cordoned_by or not n.ready}
        down |= {n.node_id for n in cluster.nodes if n.in_flight is StepKind.CORDON}
        down |= {c.node_id for c in self.sim.queue if c.cluster_id == intent.cluster_id and c.step is StepKind.CORDON}
        down |= {i.node_id for i in issued if i.cluster_id == intent.cluster_id and i.step is StepKind.CORDON}
        assert len(down) <= rollout.spec.max_unavailable, f"I1: {intent} makes {sorted(down)} unavailable"
        if node.role is NodeRole.WORKER and node.direction is Direction.FORWARD:
            behind = [nid for nid, n in truth.items() if n.role is NodeRole.CONTROL_PLANE and n.version != TARGET]
            assert not behind, f"I2: {intent} while control planes {behind} are not at {TARGET}"

    # --- the world: more than test_model drives -------------------------------------------------------------

    @initialize(
        clusters=st.integers(1, 3),
        cps=st.integers(1, 2),
        workers=st.integers(0, 3),
        max_unavailable=st.integers(1, 2),
        concurrent=st.integers(1, 2),
        approval=st.booleans(),
    )
    def start(
        self, clusters: int, cps: int, workers: int, max_unavailable: int, concurrent: int, approval: bool
    ) -> None:
        for i in range(clusters):
            self.sim.add_cluster(f"c{i}", cps=cps, workers=workers)
        self.spec = RolloutSpec(
            target_version=TARGET,
            max_unavailable=max_unavailable,
            max_concurrent_clusters=concurrent,
            waves=WavesSpec(canary_clusters=1),
            approval_before_waves=[1] if approval and clusters > 1 else [],
            failure_budget=FailureBudget(max_failed_nodes=1),
        )
        self.rid = self.sim.start(self.spec)

    def _command(self, verb: str, request: Any) -> None:
        act = getattr(recovery if verb in ("retry", "skip", "rollback") else control, verb)
        try:
            self.sim.work(lambda tx: act(self.sim.engine, tx, request, self.sim.now))
        except Exception as exc:  # refusals are fine; nothing else is
            assert getattr(exc, "code", None) is not None, exc
            return
        self.aborted |= verb in ("abort", "rollback", "skip")

    @rule(pick=st.integers(0, 10))
    @precondition(lambda self: bool(self.rid))
    def an_operator_skips_a_cluster(self, pick: int) -> None:
        clusters = sorted({c for c, _ in self.sim.nodes})
        self._command("skip", SkipClusterRequest(rollout_id=self.rid, cluster_id=clusters[pick % len(clusters)]))

    @rule()
    @precondition(lambda self: bool(self.rid))
    def an_operator_rolls_back(self) -> None:
        self._command("rollback", RollbackRequest(rollout_id=self.rid))

    @rule(wave=st.integers(0, 1))
    @precondition(lambda self: bool(self.rid))
    def an_operator_approves(self, wave: int) -> None:
        self._command("approve", ApproveWaveRequest(rollout_id=self.rid, wave=wave))

    @rule(pick=st.integers(0, 10), reachable=st.booleans())
    @precondition(lambda self: bool(self.rid))
    def a_cluster_changes_health(self, pick: int, reachable: bool) -> None:
        clusters = sorted({c for c, _ in self.sim.nodes})
        self.sim.cluster_health(
            clusters[pick % len(clusters)], ClusterHealth.READY if reachable else ClusterHealth.UNREACHABLE
        )

    # --- after every step -----------------------------------------------------------------------------------

    @invariant()
    def a_running_rollout_moves_or_says_why(self) -> None:
        rollout = self.sim.engine.rollouts.get(self.rid)
        if (
            rollout is None
            or self.sim.engine.stale
            or rollout.state not in (RolloutState.RUNNING, RolloutState.ROLLING_BACK)
        ):
            return
        if self.sim.queue or self.held or any(n.in_flight for c in rollout.clusters.values() for n in c.nodes):
            return
        view = applier.view(self.sim.engine, rollout)
        moving = decide(view, Advance(), self.sim.now).intents
        assert moving or stall.waits(rollout, self.sim.engine.fleet), (
            f"{rollout.state}, nothing in flight, nothing said"
        )

    # --- the end ----------------------------------------------------------------------------------------------

    def remove_faults(self) -> None:
        for cluster_id in sorted({c for c, _ in self.sim.nodes}):
            self.sim.cluster_health(cluster_id, ClusterHealth.READY)
        super().remove_faults()

    def unblock(self) -> None:
        for wave in range(len(self.sim.engine.rollouts[self.rid].waves)):
            self._command("approve", ApproveWaveRequest(rollout_id=self.rid, wave=wave))
        super().unblock()

    def finish(self) -> None:
        """Faults gone: the rollout ends; unless ended early, every node at the target; the oracle agrees."""
        self.remove_faults()
        self.drive_to_the_end()
        rollout = self.sim.engine.rollouts[self.rid]
        assert rollout.final, (rollout.state, rollout.rec.message)
        assert not any(n.cordoned_by == self.rid for n in self.sim.nodes.values()), "I9/I10: a node left cordoned"
        if not self.aborted:  # abort, rollback or skip end it early
            assert rollout.state is RolloutState.SUCCEEDED, (rollout.state, rollout.rec.message)
            assert all(n.version == TARGET for n in self.sim.nodes.values())
        assert self.spec is not None
        # Agents here run a command any time after it was issued (held in the queue while ticks pass), so the
        # oracle's timing slack for "a command issued just before a freeze" is unbounded; I1 and I7 at the
        # moment of deciding are checked on every decision above.
        verdict = check(
            self.log,
            max_unavailable=self.spec.max_unavailable,
            max_clusters=self.spec.max_concurrent_clusters,
            slack_s=float("inf"),
        )
        assert not verdict.violations, verdict.violations
        assert self.decisions > 0


QUICK = settings(max_examples=25, stateful_step_count=40, deadline=None, suppress_health_check=list(HealthCheck))
LONG = settings(max_examples=500, stateful_step_count=100, deadline=None, suppress_health_check=list(HealthCheck))


def test_decisions_hold_the_invariants() -> None:
    run_state_machine_as_test(DecideModel, settings=QUICK)


@pytest.mark.slow
def test_decisions_hold_the_invariants_over_long_runs() -> None:
    run_state_machine_as_test(DecideModel, settings=LONG)
