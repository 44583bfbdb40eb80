"""Node agents on a real nats-server: commands through each node's durable consumer on FLEET_AGENT.

The agents run in-process (as `flotilla sim` packs them) over one connection and one journal; what they
report goes through the outbox to JetStream, and the test reads it from the bus.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client

from flotilla_client.natsserver import NatsServer
from flotilla_contracts import subjects
from flotilla_contracts.errors import ErrorCode
from flotilla_contracts.v1.agent import RefusalReason, StepKind, StepOutcome
from flotilla_node_agent.cluster_agent import ClusterHandle
from flotilla_node_agent.drivers.sim import SimDriver, SimNodeSpec
from flotilla_node_agent.fleet_sim import drain_outbox
from flotilla_node_agent.heartbeats import Interval
from flotilla_node_agent.journal import Journal
from flotilla_node_agent.node_agent import AgentContext, NodeAgent
from flotilla_runtime import logins
from flotilla_runtime.bus import ensure_streams
from flotilla_runtime.migrations import load_migrations
from flotilla_runtime.outbox import OutboxRelay
from flotilla_runtime.store import Store

from .node_agent_support import STEPS, Watch, send, step_command

pytestmark = pytest.mark.integration


@dataclass
class Agents:
    nc: Client
    drivers: dict[str, SimDriver]
    start: object
    watch: Watch


@pytest.fixture
async def agents(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[Agents]:
    nc = await logins.connect(nats_server.url)
    js = nc.jetstream()
    await ensure_streams(js)
    store = await Store.open(tmp_path / "journal.db", load_migrations("flotilla_node_agent", "node-agent"))
    relay = OutboxRelay(store, js, poll_s=0.1)
    relay.start()
    ctx = AgentContext(
        nc=nc,
        js=js,
        store=store,
        interval=Interval(0.2),
        journal=Journal(),
        ack_wait_s=3.0,
        fetch_timeout_s=1.0,
        verify_timeout_s=2.0,
    )
    drivers = {name: SimDriver(SimNodeSpec(cluster="c1", name=name, pods=3)) for name in ("n1", "n2")}
    handle = ClusterHandle("c1")
    tasks: list[asyncio.Task[None]] = []

    async def start() -> None:
        for driver in drivers.values():
            agent = NodeAgent(ctx, driver, handle)
            tasks.append(asyncio.create_task(agent.run()))
            await asyncio.wait_for(agent.ready.wait(), 5)

    watch = Watch()
    await watch.start(nc)
    yield Agents(nc, drivers, start, watch)
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await drain_outbox(store)
    await relay.stop()
    await nc.close()
    await store.close()


async def run_steps(a: Agents, node: str = "n1") -> None:
    for step in STEPS:
        await send(a.nc, step_command(step, node=node))
        await a.watch.until(lambda step=step: a.watch.final(step, node_id=node))


async def test_every_step_succeeds_in_order_and_the_node_is_upgraded_and_uncordoned(agents: Agents) -> None:
    await agents.start()  # type: ignore[operator]
    await run_steps(agents)
    for step in STEPS:
        [report] = agents.watch.final(step, node_id="n1")
        assert report.outcome is StepOutcome.SUCCEEDED, report
    node = agents.drivers["n1"].state
    assert node.kubelet_version == "v1.30.2" and not node.unschedulable
    assert node.effects == {"cordon": 1, "drain": 1, "upgrade": 1, "uncordon": 1}
    assert agents.drivers["n2"].state.effects == {}  # the other node's agent saw nothing


async def test_commands_published_while_the_agent_is_down_wait_in_its_durable_consumer(agents: Agents) -> None:
    await send(agents.nc, step_command(StepKind.CORDON))
    await asyncio.sleep(0.3)  # sleep: proves a negative (no report for 0.3 s while no agent runs)
    assert agents.watch.reports == []
    await agents.start()  # type: ignore[operator]
    await agents.watch.until(lambda: agents.watch.final(StepKind.CORDON))
    assert agents.drivers["n1"].state.unschedulable


async def test_duplicates_and_redeliveries_never_repeat_a_step(agents: Agents) -> None:
    await agents.start()  # type: ignore[operator]
    await run_steps(agents)
    for step in STEPS:  # the orchestrator re-sends everything (e.g. after its own restart)
        await send(agents.nc, step_command(step))
    await agents.watch.until(lambda: sum(r.replayed for r in agents.watch.reports) == len(STEPS))
    assert all(r.outcome is StepOutcome.SUCCEEDED for r in agents.watch.reports if r.replayed)
    assert agents.drivers["n1"].state.effects == {"cordon": 1, "drain": 1, "upgrade": 1, "uncordon": 1}


async def test_a_stale_epoch_is_refused_and_never_executed(agents: Agents) -> None:
    await agents.start()  # type: ignore[operator]
    await send(agents.nc, step_command(StepKind.CORDON, epoch=5))
    await agents.watch.until(lambda: agents.watch.final(StepKind.CORDON))
    await send(agents.nc, step_command(StepKind.DRAIN, epoch=4))
    await agents.watch.until(lambda: agents.watch.final(StepKind.DRAIN))
    [refused] = agents.watch.final(StepKind.DRAIN)
    assert refused.outcome is StepOutcome.REFUSED and refused.refusal is RefusalReason.STALE_EPOCH
    assert "drain" not in agents.drivers["n1"].state.effects


async def test_bad_commands_are_dead_lettered_and_do_not_block_the_next(agents: Agents) -> None:
    await agents.start()  # type: ignore[operator]
    good = step_command(StepKind.CORDON)
    await send(agents.nc, good, body=b"{not json")
    await send(agents.nc, good, schema="agent.NodeStepCommand/v2")
    await send(agents.nc, step_command(StepKind.CORDON, node="n2"), subject=subjects.agent_command("c1", "n1", "step"))
    await send(agents.nc, good, subject=subjects.agent_command("c1", "n1", "reboot"))
    await send(agents.nc, good, body=msgspec.json.encode({**msgspec.to_builtins(good), "epoch": -1}))
    await send(agents.nc, good)
    await agents.watch.until(lambda: len(agents.watch.dead) == 5 and agents.watch.final(StepKind.CORDON))
    reasons = [d.reason for d in agents.watch.dead]
    assert reasons == [
        ErrorCode.MALFORMED,
        ErrorCode.UNSUPPORTED_VERSION,
        ErrorCode.SUBJECT_MISMATCH,
        ErrorCode.WRONG_SCHEMA,
        ErrorCode.INVALID_FIELD,
    ]
    assert all(d.consumer == "agent-2-c1-n1" and d.service == "node-agent" for d in agents.watch.dead)
    # On the cluster's own dead-letter subject, the only one the bus lets that cluster's agents publish.
    assert set(agents.watch.dead_subjects) == {"fleet.v1.evt.dead-letter.node-agent.c1.recorded"}
    assert agents.drivers["n1"].state.effects == {"cordon": 1}  # only the good one took effect
    assert agents.drivers["n2"].state.effects == {}  # n2's command on n1's subject was not run anywhere
