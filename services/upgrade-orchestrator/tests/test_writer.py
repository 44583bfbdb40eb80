"""Status says who writes a rollout (I6): this replica, another one (named, with its epoch), a fenced writer,
or nobody, which is how a Running rollout that no process writes shows (NoProgress cannot: it is not run)."""

from __future__ import annotations

from orchestrator_harness import Sim

from flotilla_contracts.v1.upgrade import RolloutSpec
from flotilla_contracts.v1.upgrade_status import RolloutState, RolloutStatusRequest
from flotilla_upgrade_orchestrator import queries
from flotilla_upgrade_orchestrator.lease import LeaseValue
from flotilla_upgrade_orchestrator.writer import LeaseView

NOW = 1_800_000_000.0


def _status(sim: Sim, rid: str, view: LeaseView):  # type: ignore[no-untyped-def]
    return sim.work(lambda tx: queries.status(sim.engine, RolloutStatusRequest(rollout_id=rid), view))


def _running(sim: Sim, epoch: int = 3) -> str:
    sim.add_cluster("c0", workers=1)
    sim.epoch = epoch
    rid = sim.start(RolloutSpec(target_version="v1.30.4"))
    assert sim.engine.rollouts[rid].state is RolloutState.RUNNING
    return rid


def test_this_replica_holds_the_lease(sim: Sim) -> None:
    rid = _running(sim)
    writer = _status(sim, rid, LeaseView(instance_id="uo-a", held=3, now=NOW)).writer
    assert writer is not None and writer.held_here and not writer.fenced
    assert (writer.instance_id, writer.epoch) == ("uo-a", 3)
    assert writer.message == "written by uo-a (the replica that answered) at epoch 3"


def test_another_replica_holds_it(sim: Sim) -> None:
    rid = _running(sim)
    seen = LeaseValue(owner="uo-b", epoch=4, expires_at=NOW + 10)
    writer = _status(sim, rid, LeaseView(instance_id="uo-a", held=None, seen=seen, now=NOW)).writer
    assert writer is not None and not writer.held_here
    assert (writer.instance_id, writer.epoch, writer.answered_by) == ("uo-b", 4, "uo-a")
    assert writer.message == "written by uo-b at epoch 4 (this replica, uo-a, does not hold the lease)"


def test_a_replica_whose_lease_is_older_than_the_rollout_is_fenced(sim: Sim) -> None:
    rid = _running(sim, epoch=5)  # a newer writer stored epoch 5 on the rollout
    writer = _status(sim, rid, LeaseView(instance_id="uo-a", held=4, now=NOW)).writer
    assert writer is not None and writer.fenced and not writer.held_here
    assert "fenced" in writer.message and "stored epoch 5" in writer.message


def test_a_running_rollout_nobody_writes_says_so(sim: Sim) -> None:
    rid = _running(sim)
    expired = LeaseValue(owner="uo-b", epoch=3, expires_at=NOW - 1)
    reply = _status(sim, rid, LeaseView(instance_id="uo-a", held=None, seen=expired, now=NOW))
    assert reply.rollout.state is RolloutState.RUNNING
    assert reply.writer is not None and reply.writer.instance_id == "" and reply.writer.epoch == 3
    assert reply.writer.message.startswith("this replica (uo-a) does not hold the lease and saw no live holder")
    assert "last holder uo-b at epoch 3, lease expired" in reply.writer.message
    assert "nobody writes this rollout" in reply.writer.message
