"""Simulated nodes kept in the sim's journal database: a restart finds them as left, never behind a report."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from flotilla_contracts.v1.agent import DrainOptions, NodeStepReported, StepKind, StepOutcome, TargetVersions
from flotilla_node_agent.drivers.base import AgentCrashed, DriverUnavailable, StepFailed
from flotilla_node_agent.drivers.sim import SimDriver, SimNodeSpec, SimNodeState
from flotilla_node_agent.journal import Journal
from flotilla_node_agent.sim_states import SimNodeStates
from flotilla_node_agent.steps import Ack, StepRunner
from flotilla_runtime.logs import get_logger
from flotilla_runtime.migrations import load_migrations
from flotilla_runtime.store import Store

from .conftest import command

TARGET = TargetVersions(kubernetes_version="v1.30.2")
SPEC = SimNodeSpec(cluster="c1", name="n1", pods=3, faults=("upgrade_fails_once",), crash_at=("cordon:after",))


async def open_store(path: Path) -> Store:
    return await Store.open(path, load_migrations("flotilla_node_agent", "node-agent"))


async def restarted(db: Path, spec: SimNodeSpec = SPEC) -> tuple[Store, SimDriver]:
    """A new process: the journal file is all that is left of the last one."""
    store = await open_store(db)
    return store, SimDriver(spec, keeper=await SimNodeStates.load(store))


async def no_progress(_: object) -> None:
    return None


async def test_a_restarted_node_keeps_its_version_cordon_pods_and_spent_faults(tmp_path: Path) -> None:
    db = tmp_path / "sim-journal.db"
    store, driver = await restarted(db)
    with pytest.raises(AgentCrashed):
        await driver.cordon("r1")
    await store.close()

    store, driver = await restarted(db)
    assert driver.state.unschedulable and driver.state.cordoned_by == "r1"
    assert not (await driver.cordon("r1")).changed  # the crash point fired before the restart: no second crash
    await driver.drain("r1", DrainOptions(), no_progress)
    with pytest.raises(StepFailed, match="a retry succeeds"):
        await driver.upgrade(TARGET, None)
    await store.close()

    store, driver = await restarted(db)
    assert [p.owner for p in driver.state.pods] == ["DaemonSet"]
    await driver.upgrade(TARGET, None)  # upgrade_fails_once failed before the restart: this one goes through
    await store.close()

    store, driver = await restarted(db)
    assert driver.state.kubelet_version == "v1.30.2" and (await driver.facts()).kubelet_version == "v1.30.2"
    assert driver.state.unschedulable
    assert (await driver.uncordon("r1")).changed  # still known as cordoned by r1, so ours to uncordon (I9)
    assert driver.state.effects == {"cordon": 1, "drain": 1, "upgrade": 1, "uncordon": 1}
    other = SimDriver(SimNodeSpec(cluster="c1", name="n2"), keeper=await SimNodeStates.load(store))
    assert other.state.kubelet_version == "v1.29.6" and not other.state.unschedulable  # never saved: as new
    await store.close()


class Flaky:
    """A keeper whose next save, once armed, does not commit (a full disk, a busy database)."""

    def __init__(self, states: SimNodeStates) -> None:
        self.states, self.fail_next = states, False

    def saved(self, node: str) -> SimNodeState | None:
        return self.states.saved(node)

    async def save(self, node: str, state: SimNodeState) -> None:
        if self.fail_next:
            self.fail_next = False
            raise DriverUnavailable("simulated: the journal did not commit")
        await self.states.save(node, state)


async def test_a_step_is_reported_done_only_once_its_effect_is_saved(tmp_path: Path) -> None:
    db = tmp_path / "sim-journal.db"
    store = await open_store(db)
    keeper = Flaky(await SimNodeStates.load(store))
    runner = StepRunner(
        store, Journal(), SimDriver(SimNodeSpec(cluster="c1", name="n1"), keeper=keeper), get_logger("test")
    )
    for step in (StepKind.CORDON, StepKind.DRAIN):
        assert (await runner.execute(command(step), delivery=1)).ack is Ack.ACK
    keeper.fail_next = True
    upgrade = command(StepKind.UPGRADE)
    assert (await runner.execute(upgrade, delivery=1)).ack is Ack.RETRY  # upgraded, but not saved: not reported
    rows = await store.fetchall("SELECT payload FROM outbox")
    reports = [msgspec.json.decode(r["payload"], type=NodeStepReported) for r in rows]
    assert not [r for r in reports if r.step is StepKind.UPGRADE and r.outcome is StepOutcome.SUCCEEDED]
    resumed = await runner.execute(upgrade, delivery=2)  # the redelivery finds the node upgraded
    assert resumed.report is not None and resumed.report.outcome is StepOutcome.SUCCEEDED
    await store.close()

    store, again = await restarted(db, SimNodeSpec(cluster="c1", name="n1"))
    assert again.state.kubelet_version == "v1.30.2"  # what was reported done is what the journal kept
    await store.close()
