"""The simulated node: deterministic for a seed, faults drawn or named, I9 cordon ownership, state kept on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from flotilla_contracts.v1.agent import DrainOptions, StepProgress, TargetVersions
from flotilla_node_agent.drivers.base import AgentCrashed, StepFailed
from flotilla_node_agent.drivers.sim import CRASH_POINTS, SimDriver, SimNodeSpec
from flotilla_node_agent.fleet_sim import node_specs
from flotilla_node_agent.sim_args import parse

TARGET = TargetVersions(kubernetes_version="v1.30.2")


async def no_progress(_: StepProgress) -> None:
    return None


def fleet(seed: int, fail_rate: float = 0.3) -> list[SimNodeSpec]:
    return [
        SimNodeSpec.generate(seed, f"c{c}", i, version="v1.29.6", fail_rate=fail_rate)
        for c in range(20)
        for i in range(5)
    ]


def test_the_same_seed_draws_the_same_fleet_and_another_seed_does_not() -> None:
    assert fleet(7) == fleet(7)
    assert fleet(7) != fleet(8)
    faulty = [s for s in fleet(7) if s.faults]
    assert 10 <= len(faulty) <= 50  # about 30% of 100
    assert all(not s.faults for s in fleet(7, fail_rate=0.0))


async def test_a_clean_node_goes_through_every_step() -> None:
    driver = SimDriver(SimNodeSpec(cluster="c", name="n1", pods=4))
    assert (await driver.cordon("r1")).changed
    drained = await driver.drain("r1", DrainOptions(), no_progress)
    assert len(drained.evicted) == 4 and [p.reason for p in drained.skipped] == ["DaemonSet pod"]
    await driver.upgrade(TARGET, None)
    assert await driver.verify(TARGET, 5.0) == "v1.30.2"
    assert (await driver.uncordon("r1")).changed
    assert driver.state.effects == {"cordon": 1, "drain": 1, "upgrade": 1, "uncordon": 1}


async def test_a_node_cordoned_by_someone_else_is_never_uncordoned_by_us() -> None:
    driver = SimDriver(SimNodeSpec(cluster="c", name="n1"))
    driver.state.unschedulable = True  # an operator cordoned it
    assert (await driver.cordon("r1")).was_cordoned
    result = await driver.uncordon("r1")
    assert not result.changed and "left cordoned" in result.message and driver.state.unschedulable


async def test_a_blocked_drain_fails_naming_the_pods_after_the_capped_timeout() -> None:
    driver = SimDriver(SimNodeSpec(cluster="c", name="n1", pods=2, budgets={"web": 0}, max_wait_s=0.3))
    with pytest.raises(StepFailed) as failed:
        await driver.drain("r1", DrainOptions(timeout_s=600), no_progress)
    assert failed.value.reason == "drain_timeout"
    assert {p.name for p in failed.value.blocking_pods} == {"web-n1-0", "web-n1-1"}


async def test_upgrade_failure_and_not_ready_after_upgrade() -> None:
    failing = SimDriver(SimNodeSpec(cluster="c", name="n1", faults=("upgrade_fails",)))
    with pytest.raises(StepFailed, match="package install failed"):
        await failing.upgrade(TARGET, None)
    sick = SimDriver(SimNodeSpec(cluster="c", name="n2", faults=("not_ready_after_upgrade",), max_wait_s=0.2))
    await sick.upgrade(TARGET, None)
    with pytest.raises(StepFailed, match=r"NotReady at v1\.30\.2"):
        await sick.verify(TARGET, 600)


async def test_a_crash_point_fires_once_and_the_node_is_kept_across_restarts(tmp_path: Path) -> None:
    spec = SimNodeSpec(cluster="c", name="n1", crash_at=("cordon:after",))
    driver = SimDriver(spec, state_path=tmp_path / "n1.json")
    with pytest.raises(AgentCrashed):
        await driver.cordon("r1")
    again = SimDriver(spec, state_path=tmp_path / "n1.json")
    assert again.state.unschedulable and again.state.cordoned_by == "r1"
    result = await again.cordon("r1")
    assert not result.changed and not result.was_cordoned
    assert again.state.effects == {"cordon": 1}


async def test_a_transient_upgrade_failure_passes_on_retry_even_after_a_restart(tmp_path: Path) -> None:
    spec = SimNodeSpec(cluster="c", name="n1", faults=("upgrade_fails_once",))
    first = SimDriver(spec, state_path=tmp_path / "n1.json")
    with pytest.raises(StepFailed, match="a retry succeeds"):
        await first.upgrade(TARGET, None)
    restarted = SimDriver(spec, state_path=tmp_path / "n1.json")
    await restarted.upgrade(TARGET, None)
    assert restarted.state.kubelet_version == "v1.30.2"


def specs(*faults: str, seed: int = 1) -> list[SimNodeSpec]:
    """The nodes of cluster sim-0003 as `python -m flotilla_node_agent.fleet_sim --fault ...` builds them."""
    spec, _ = parse(["--clusters", "4", "--nodes", "3", "--seed", str(seed), *(f"--fault={f}" for f in faults)])
    return node_specs(spec, 3)


def test_named_faults_land_on_the_named_node_only_and_leave_the_others_as_drawn() -> None:
    placed = specs("sim-0003-n02=upgrade_fails_once", "sim-0003-n01=drain_blocked")
    assert [n.faults for n in placed] == [(), ("drain_blocked",), ("upgrade_fails_once",)]
    assert placed[0] == specs()[0]
    assert placed == specs("sim-0003-n02=upgrade_fails_once", "sim-0003-n01=drain_blocked")  # same seed, same fleet


async def test_a_drain_blocked_placed_by_name_blocks_the_drain_as_a_drawn_one_does() -> None:
    blocked = SimDriver(specs("sim-0003-n01=drain_blocked")[1])
    with pytest.raises(StepFailed) as failed:
        await blocked.drain("r1", DrainOptions(timeout_s=0.3), no_progress)
    assert failed.value.reason == "drain_timeout" and failed.value.blocking_pods


async def test_an_agent_crash_placed_by_name_crashes_once_at_a_crash_point_of_its_seed() -> None:
    named = [specs("sim-0003-n01=agent_crash", seed=seed)[1] for seed in range(1, 9)]
    assert all(len(n.crash_at) == 1 and n.crash_at[0] in CRASH_POINTS for n in named)
    assert len({n.crash_at for n in named}) > 1  # drawn from each seed, not one fixed point
    driver = SimDriver(named[0])
    crashes = 0
    for step in (
        lambda: driver.cordon("r1"),
        lambda: driver.drain("r1", DrainOptions(), no_progress),
        lambda: driver.upgrade(TARGET, None),
        lambda: driver.uncordon("r1"),
    ):
        try:
            await step()
        except AgentCrashed:
            crashes += 1
            await step()  # the redelivered command: the point has fired, the step goes through
    assert crashes == 1
    assert driver.state.kubelet_version == "v1.30.2" and not driver.state.unschedulable


async def test_a_drain_on_a_node_schedulable_again_cordons_it_with_our_mark_first() -> None:
    driver = SimDriver(SimNodeSpec(cluster="c", name="n1", pods=2))
    seen: list[str] = []

    async def progress(report: StepProgress) -> None:
        seen.append(report.phase)

    drained = await driver.drain("r1", DrainOptions(), progress)
    assert drained.recordoned == 1 and seen[0].startswith("re-cordoned")
    assert driver.state.unschedulable and driver.state.cordoned_by == "r1"
    assert (await driver.uncordon("r1")).changed  # the cordon is ours, so ours to undo (I9)


async def test_a_drain_leaves_someone_elses_cordon_alone() -> None:
    driver = SimDriver(SimNodeSpec(cluster="c", name="n1", pods=2))
    driver.state.unschedulable = True  # an operator cordoned it
    drained = await driver.drain("r1", DrainOptions(), no_progress)
    assert drained.recordoned == 0 and driver.state.cordoned_by == ""
