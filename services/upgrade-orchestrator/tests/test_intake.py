"""The intake on a real nats-server: a step report whose handling always raises is dead-lettered after the
intake's max deliveries, and the reports behind it are applied: the rollout still completes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from orchestrator_commands import Commands

from flotilla_contracts import catalogue
from flotilla_contracts.envelope import H_MSG_ID, H_SCHEMA, schema_id
from flotilla_contracts.v1.agent import NodeStepCommand, NodeStepReported, StepKind, StepOutcome, step_report
from flotilla_contracts.v1.upgrade import RolloutSpec, StartRolloutRequest
from flotilla_contracts.v1.upgrade_status import RolloutState, RolloutStatusRequest
from flotilla_runtime.bus import ensure_streams
from flotilla_runtime.commands import CommandContext
from flotilla_runtime.logs import get_logger
from flotilla_runtime.migrations import load_migrations
from flotilla_runtime.store import Store, SyncTx
from flotilla_runtime.trust import RefusalLedger
from flotilla_upgrade_orchestrator import reports
from flotilla_upgrade_orchestrator.engine import Engine
from flotilla_upgrade_orchestrator.handlers import Orchestrator
from flotilla_upgrade_orchestrator.intake import Intake

CTX = CommandContext(subject="test", headers={}, msg_id="", log=get_logger("test-intake"))
POISON_ID = "poison-1"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(tmp_path / "uo.db", load_migrations("flotilla_upgrade_orchestrator", "upgrade"))
    try:
        yield opened
    finally:
        await opened.close()


async def publish_report(js: JetStreamContext, report: NodeStepReported, msg_id: str) -> None:
    subject = catalogue.subject_for(NodeStepReported, cluster_id=report.cluster_id, node_id=report.node_id)
    headers = {H_SCHEMA: schema_id(NodeStepReported), H_MSG_ID: msg_id}
    await js.publish(subject, msgspec.json.encode(report), headers=headers)


def reported(command: NodeStepCommand, outcome: StepOutcome) -> NodeStepReported:
    kubelet = command.target.kubernetes_version if command.step is StepKind.VERIFY else None
    return step_report(command, outcome, datetime.now(UTC), kubelet_version=kubelet)


async def outbox(store: Store, kind: str) -> list[dict[str, Any]]:
    return [
        msgspec.json.decode(row["payload"])
        for row in await store.pending_outbox(10_000)
        if msgspec.json.decode(row["headers"])[H_SCHEMA] == kind
    ]


async def test_an_event_that_always_raises_is_dead_lettered_and_the_rollout_goes_on(nc: Client, store: Store) -> None:
    js = nc.jetstream()
    await ensure_streams(js)
    engine = Engine()
    orchestrator = Orchestrator(store=store, engine=engine)

    await Commands(broker=None, store=store, orchestrator=orchestrator).fleet("c1", cps=1, workers=1)
    ledger = RefusalLedger("upgrade-orchestrator")
    poison_tries: list[int] = []

    def receive(report: NodeStepReported, subject: str, tx: SyncTx, now: datetime) -> None:
        reports.receive_report(engine, ledger, tx, subject, report, now)  # half-applied, then it fails:
        if report.message == POISON_ID:  # its writes and the engine's memory of them must be undone
            poison_tries.append(1)
            raise RuntimeError("this report always breaks the handler")

    intake = Intake(
        purpose="steps-poison-test",
        filter_subjects=[catalogue.operation_for(NodeStepReported).filter],
        handlers={NodeStepReported: receive},
        engine=engine,
        run_work=orchestrator.run,
        store=store,
        instance_id="t1",
        batch=8,
        max_deliveries=3,
        fetch_timeout_s=0.2,
    )
    task = asyncio.create_task(intake.run(js))
    try:
        started = await orchestrator.start(
            StartRolloutRequest(request_id="r1", spec=RolloutSpec(target_version="v1.30.4")), CTX
        )
        answered: set[str] = set()
        poisoned = False
        deadline = asyncio.get_running_loop().time() + 60
        while True:
            status = await orchestrator.status(RolloutStatusRequest(rollout_id=started.rollout_id), CTX)
            if status.rollout.state is RolloutState.SUCCEEDED and await outbox(store, "deadletter.DeadLettered/v1"):
                break
            assert status.rollout.state in (RolloutState.RUNNING, RolloutState.SUCCEEDED), status.rollout
            if asyncio.get_running_loop().time() > deadline:
                request = RolloutStatusRequest(rollout_id=started.rollout_id, include_nodes=True)
                raise AssertionError(f"the rollout stalled: {await orchestrator.status(request, CTX)}")
            for body in await outbox(store, schema_id(NodeStepCommand)):
                command = msgspec.convert(body, NodeStepCommand)
                if command.command_id in answered:
                    continue
                answered.add(command.command_id)
                if not poisoned:  # the first command's acceptance, a copy that always fails, ahead of the rest
                    poison = msgspec.structs.replace(reported(command, StepOutcome.ACCEPTED), message=POISON_ID)
                    await publish_report(js, poison, POISON_ID)
                    poisoned = True
                for outcome in (StepOutcome.ACCEPTED, StepOutcome.SUCCEEDED):
                    await publish_report(js, reported(command, outcome), f"{command.command_id}-{outcome.value}")
            await asyncio.sleep(0.05)  # sleep: the fake agents' pace: poll the status, answer new commands
    finally:
        intake.stop()
        await asyncio.wait_for(task, 10)
    assert len(poison_tries) == 3, "tried exactly max deliveries times"
    [dead] = await outbox(store, "deadletter.DeadLettered/v1")
    assert dead["original_msg_id"] == POISON_ID and dead["attempts"] == 3 and dead["reason"] == "internal"
    assert "RuntimeError: this report always breaks the handler" in dead["message"]
    assert intake.stats.dead_lettered == 1
    assert len(answered) == 2 * 5, "every step of both nodes was issued once"
