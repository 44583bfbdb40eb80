"""A stateful model test of the engine: random interleavings of agent reports (duplicated, reordered,
delayed), crashes that reload everything from the store, ticks, pause/resume, abort, failures and retries.

After every step the invariants hold (the simulated agents raise on I1, I2, I3, I4 and I9 as commands
execute; here: node states forward only, the in-memory state equals what the store reloads, no command
issued twice). At the end, with faults removed, a rollout that was not aborted completes with every node
at the target and uncordoned (I10).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from orchestrator_harness import Sim

from flotilla_contracts.v1.agent import NodeStepReported
from flotilla_contracts.v1.heartbeat import NodeHealth
from flotilla_contracts.v1.upgrade import (
    AbortRolloutRequest,
    FailureBudget,
    PauseRolloutRequest,
    ResumeRolloutRequest,
    RetryRequest,
    RolloutSpec,
    WavesSpec,
)
from flotilla_contracts.v1.upgrade_status import RolloutState
from flotilla_upgrade_orchestrator import control, recovery, retries, store
from flotilla_upgrade_orchestrator.engine import Engine


def act(verb: str) -> Any:
    return getattr(recovery if verb == "retry" else control, verb)


class RolloutModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.TemporaryDirectory()
        self.sim = Sim(Path(self.dir.name) / "model.db")
        self.held: list[NodeStepReported] = []
        self.delivered: list[NodeStepReported] = []
        self.rid = ""
        self.aborted = False

    def teardown(self) -> None:
        try:
            if self.rid:
                self.finish()
        finally:
            self.sim.conn.close()
            self.dir.cleanup()

    @initialize(
        clusters=st.integers(1, 4),
        cps=st.integers(1, 3),
        workers=st.integers(0, 4),
        max_unavailable=st.integers(1, 3),
        concurrent=st.integers(1, 3),
        canary=st.integers(0, 2),
    )
    def start(self, clusters: int, cps: int, workers: int, max_unavailable: int, concurrent: int, canary: int) -> None:
        for i in range(clusters):
            self.sim.add_cluster(f"c{i}", cps=cps, workers=workers)
        spec = RolloutSpec(
            target_version="v1.30.4",
            max_unavailable=max_unavailable,
            max_concurrent_clusters=concurrent,
            waves=WavesSpec(canary_clusters=canary),
            failure_budget=FailureBudget(max_failed_nodes=1),
        )
        self.rid = self.sim.start(spec)

    @rule(pick=st.integers(0, 1000), outcome=st.sampled_from(["deliver", "hold", "duplicate"]))
    @precondition(lambda self: bool(self.sim.queue))
    def agent_runs_a_command(self, pick: int, outcome: str) -> None:
        """An agent executes any queued command (nodes run independently: order across nodes is free)."""
        command = self.sim.queue.pop(pick % len(self.sim.queue))
        report = self.sim.execute(command)
        if outcome == "hold":
            self.held.append(report)
            return
        self.sim.deliver(report)
        self.delivered.append(report)
        if outcome == "duplicate":
            self.sim.deliver(report)

    @rule(pick=st.integers(0, 1000))
    @precondition(lambda self: bool(self.held))
    def a_delayed_report_arrives(self, pick: int) -> None:
        report = self.held.pop(pick % len(self.held))
        self.sim.deliver(report)
        self.delivered.append(report)

    @rule(pick=st.integers(0, 1000))
    @precondition(lambda self: bool(self.delivered))
    def an_old_report_is_redelivered(self, pick: int) -> None:
        self.sim.deliver(self.delivered[pick % len(self.delivered)])

    @rule()
    @precondition(lambda self: bool(self.rid))
    def the_orchestrator_crashes(self) -> None:
        self.sim.crash()

    @rule(seconds=st.sampled_from([1.0, 30.0]))
    @precondition(lambda self: bool(self.rid))
    def time_passes(self, seconds: float) -> None:
        self.sim.tick(seconds)

    @rule(pick=st.integers(0, 1000), step=st.sampled_from(["drain", "upgrade", "verify"]))
    @precondition(lambda self: bool(self.rid))
    def a_node_will_fail(self, pick: int, step: str) -> None:
        nodes = list(self.sim.nodes.values())
        nodes[pick % len(nodes)].fail_steps.add(step)

    @rule(pick=st.integers(0, 1000), ready=st.booleans())
    @precondition(lambda self: bool(self.rid))
    def a_node_changes_health(self, pick: int, ready: bool) -> None:
        node = list(self.sim.nodes.values())[pick % len(self.sim.nodes)]
        self.sim.node_health(node.cluster_id, node.node_id, NodeHealth.READY if ready else NodeHealth.NOT_READY)

    @rule(verb=st.sampled_from(["pause", "resume", "retry", "abort"]))
    @precondition(lambda self: bool(self.rid))
    def an_operator_acts(self, verb: str) -> None:
        if verb == "abort" and self.sim.engine.rollouts.get(self.rid) is None:
            return
        request = {
            "pause": PauseRolloutRequest(rollout_id=self.rid),
            "resume": ResumeRolloutRequest(rollout_id=self.rid),
            "retry": RetryRequest(rollout_id=self.rid),
            "abort": AbortRolloutRequest(rollout_id=self.rid),
        }[verb]
        try:
            self.sim.work(
                lambda tx: getattr(recovery if verb == "retry" else control, verb)(
                    self.sim.engine, tx, request, self.sim.now
                )
            )
        except Exception as exc:  # refusals are fine; nothing else is
            assert getattr(exc, "code", None) is not None, exc
            return
        self.aborted |= verb == "abort"

    @rule()
    @precondition(lambda self: self._a_failed_cluster_settles())
    def an_operator_retries_while_a_failed_cluster_settles(self) -> None:
        """`retry` as soon as a node failed, before its cluster gave its other nodes back: queued, never refused."""
        reply = self.sim.work(
            lambda tx: recovery.retry(self.sim.engine, tx, RetryRequest(rollout_id=self.rid), self.sim.now)
        )
        assert "retrying" in reply.message

    def _a_failed_cluster_settles(self) -> bool:
        rollout = self.sim.engine.rollouts.get(self.rid)  # none right after a crash, until a work reloads
        return rollout is not None and any(retries.failing(c) for c in rollout.clusters.values())

    @invariant()
    def states_only_move_forward(self) -> None:
        self.sim.check_forward_only()

    @invariant()
    def memory_matches_the_store(self) -> None:
        if not self.rid or self.sim.engine.stale:
            return
        fresh = Engine()
        self.sim.work(lambda tx: None)
        self.sim.conn.execute("BEGIN")
        try:
            from flotilla_runtime.store import SyncTx

            loaded = store.load_rollouts(SyncTx(self.sim.conn, {}))
        finally:
            self.sim.conn.execute("ROLLBACK")
        del fresh
        mine = self.sim.engine.rollouts[self.rid]
        theirs = loaded[self.rid]
        assert mine.rec == theirs.rec
        assert list(mine.clusters) == list(theirs.clusters)
        for cid, cluster in mine.clusters.items():
            assert cluster == theirs.clusters[cid], cid

    def remove_faults(self) -> None:
        """No more injected failures, every node Ready again, every held report delivered."""
        for node in self.sim.nodes.values():
            node.fail_steps = set()
            if not node.ready:
                self.sim.node_health(node.cluster_id, node.node_id, NodeHealth.READY)
        for report in self.held:
            self.sim.deliver(report)
        self.held = []

    def unblock(self) -> None:
        """What an operator does about a rollout that waits: resume it, retry its failed clusters."""
        for verb, request in (
            ("resume", ResumeRolloutRequest(rollout_id=self.rid)),
            ("retry", RetryRequest(rollout_id=self.rid)),
        ):
            try:
                self.sim.work(
                    lambda tx, v=verb, r=request: getattr(recovery if v == "retry" else control, v)(
                        self.sim.engine, tx, r, self.sim.now
                    )
                )  # type: ignore[misc]
            except Exception as exc:  # refusals are fine; nothing else is
                assert getattr(exc, "code", None) is not None, exc

    def drive_to_the_end(self) -> None:
        """Agents and ticks until the rollout ends, unblocking it whenever it waits (at most 20 times)."""
        for _ in range(20):
            self.sim.run(tick_s=30)
            if self.sim.engine.rollouts[self.rid].final:
                return
            self.unblock()

    def finish(self) -> None:
        """Faults gone, every held report delivered: the rollout ends, and if not aborted, fully (I10)."""
        self.remove_faults()
        self.drive_to_the_end()
        rollout = self.sim.engine.rollouts[self.rid]
        assert rollout.final, rollout.state
        assert not any(n.cordoned_by == self.rid for n in self.sim.nodes.values())
        if rollout.state is RolloutState.SUCCEEDED:
            assert all(n.version == "v1.30.4" for n in self.sim.nodes.values())
        if not self.aborted:
            assert rollout.state is RolloutState.SUCCEEDED, (rollout.state, rollout.rec.message)


# The default run: a quick pass over short interleavings (about a second). The long form, in `make test-slow`,
# explores many more and longer ones (and is the run to repeat after changing the engine).
QUICK = settings(max_examples=30, stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LONG = settings(max_examples=600, stateful_step_count=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_the_rollout_model_holds() -> None:
    run_state_machine_as_test(RolloutModel, settings=QUICK)


@pytest.mark.slow
def test_the_rollout_model_holds_over_long_runs() -> None:
    run_state_machine_as_test(RolloutModel, settings=LONG)
