"""The journal on a real SQLite file: records before acting, replays duplicates, resumes after a crash."""

from __future__ import annotations

from pathlib import Path

import msgspec

from flotilla_contracts.v1.agent import NodeStepReported, StepKind, StepOutcome
from flotilla_node_agent.domain import StepStatus
from flotilla_node_agent.drivers.sim import SimDriver, SimNodeSpec
from flotilla_node_agent.journal import Journal, Membership
from flotilla_node_agent.steps import Ack, StepRunner
from flotilla_runtime.logs import get_logger
from flotilla_runtime.migrations import load_migrations
from flotilla_runtime.store import Store

from .conftest import command


async def open_store(path: Path) -> Store:
    return await Store.open(path, load_migrations("flotilla_node_agent", "node-agent"))


def sim(tmp_path: Path, crash_at: tuple[str, ...] = ()) -> SimDriver:
    spec = SimNodeSpec(cluster="c1", name="n1", pods=3, crash_at=crash_at)
    return SimDriver(spec, state_path=tmp_path / "node.json")


async def reports(store: Store) -> list[NodeStepReported]:
    rows = await store.fetchall("SELECT payload FROM outbox ORDER BY seq")
    return [msgspec.json.decode(row["payload"], type=NodeStepReported) for row in rows]


async def test_a_step_is_recorded_with_its_report_and_a_duplicate_is_replayed(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "journal.db")
    driver = sim(tmp_path)
    runner = StepRunner(store, Journal(), driver, get_logger("test"))
    first = await runner.execute(command(StepKind.CORDON), delivery=1)
    again = await runner.execute(command(StepKind.CORDON), delivery=2)
    assert first.ack is Ack.ACK and first.report is not None and first.report.outcome is StepOutcome.SUCCEEDED
    assert again.report is not None and again.report.replayed and again.report.outcome is StepOutcome.SUCCEEDED
    assert driver.state.effects == {"cordon": 1}
    outcomes = [(r.outcome, r.replayed) for r in await reports(store)]
    assert outcomes == [(StepOutcome.ACCEPTED, False), (StepOutcome.SUCCEEDED, False), (StepOutcome.SUCCEEDED, True)]
    await store.close()


async def test_a_step_interrupted_after_its_effect_resumes_without_repeating_it(tmp_path: Path) -> None:
    db = tmp_path / "journal.db"
    store = await open_store(db)
    driver = sim(tmp_path, crash_at=("drain:after",))
    runner = StepRunner(store, Journal(), driver, get_logger("test"))
    assert (await runner.execute(command(StepKind.CORDON), 1)).ack is Ack.ACK
    crashed = await runner.execute(command(StepKind.DRAIN), 1)
    assert crashed.ack is Ack.DROP
    entries = {e.step: e.status for e in await _entries(store)}
    assert entries == {StepKind.CORDON: StepStatus.SUCCEEDED, StepKind.DRAIN: StepStatus.RUNNING}
    await store.close()

    # A new process: the journal file and the node are all that is left.
    store = await open_store(db)
    driver = sim(tmp_path, crash_at=("drain:after",))
    runner = StepRunner(store, Journal(), driver, get_logger("test"))
    resumed = await runner.execute(command(StepKind.DRAIN), 2)
    assert resumed.report is not None and resumed.report.outcome is StepOutcome.SUCCEEDED
    assert resumed.report.reason == ""
    assert driver.state.effects == {"cordon": 1, "drain": 1}
    accepted = [r for r in await reports(store) if r.outcome is StepOutcome.ACCEPTED and r.step is StepKind.DRAIN]
    assert len(accepted) == 1  # the resume's "accepted" carries the same event id: announced once
    await store.close()


async def test_the_highest_epoch_sticks_and_older_ones_are_refused(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "journal.db")
    runner = StepRunner(store, Journal(), sim(tmp_path), get_logger("test"))
    await runner.execute(command(StepKind.CORDON, epoch=4), 1)
    stale = await runner.execute(command(StepKind.DRAIN, epoch=3), 1)
    assert stale.report is not None and stale.report.outcome is StepOutcome.REFUSED
    assert stale.report.refusal is not None and stale.report.refusal.value == "stale_epoch"
    await store.close()


async def test_membership_keeps_the_credential_when_a_later_reply_has_none(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "journal.db")
    journal = Journal()
    await journal.save_membership(store, Membership("uid1", "c1", "secret", "Pending"))
    await journal.save_membership(store, Membership("uid1", "c1", None, "Approved"))
    saved = await journal.membership(store, "uid1")
    assert saved == Membership("uid1", "c1", "secret", "Approved", "")
    await store.close()


async def _entries(store: Store) -> list[object]:
    async with store.transaction() as tx:
        return list(await Journal().entries(tx, "c1", "n1", "r1"))
