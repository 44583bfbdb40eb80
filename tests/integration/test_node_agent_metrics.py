"""A node-agent process's /metrics on a real nats-server: steps by outcome and their durations, refusals by
reason, dead letters under the stable consumer name, heartbeats; and after the server restarts under it (the
connection rebuilt), the same counters go on and the exposition stays valid (no family or series twice).

The agent runs as its own OS process (`python -m flotilla_node_agent`, the sim driver) and the test scrapes
it as Prometheus would."""

from __future__ import annotations

import asyncio
import subprocess
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from nats.aio.client import Client

from flotilla_client.natsserver import NatsServer, free_port
from flotilla_contracts import subjects
from flotilla_contracts.subjects import Service
from flotilla_contracts.v1.agent import StepKind, StepOutcome
from flotilla_runtime import logins
from flotilla_runtime.bus import ensure_streams
from flotilla_testkit import eventually

from .integration_support import service_log, start_service
from .node_agent_support import STEPS, Watch, send, step_command

pytestmark = pytest.mark.integration

Samples = dict[str, float]
CONSUMER = 'consumer="node-agent-commands"'


@dataclass
class Exposition:
    """One scrape: every sample line by series, and the family names in TYPE-line order."""

    samples: Samples
    families: list[str]
    series: list[str]

    def at(self, series: str) -> float:
        return self.samples.get(series, 0.0)

    def __repr__(self) -> str:
        """The agent's own figures and the runtime's consumer and bus lines (what a failure needs to show)."""
        shown = ("flotilla_node_agent_", "flotilla_dead_letters", "flotilla_events", "flotilla_bus", "flotilla_service")
        lines = [f"{k} {v:g}" for k, v in self.samples.items() if k.startswith(shown) and "_bucket" not in k]
        return "\n".join(lines) or "(no samples: not serving)"


def scrape(port: int) -> Exposition:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: Samples = {}
    families: list[str] = []
    series: list[str] = []
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            families.append(line.split()[2])
        elif line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            series.append(name)
            samples[name] = float(value.replace("+Inf", "inf"))
    return Exposition(samples, families, series)


@dataclass
class Agent:
    nc: Client
    watch: Watch
    port: int
    process: subprocess.Popen[bytes]
    state: Path

    async def scraped(self, wanted: Mapping[str, float], what: str, timeout_s: float = 30) -> Exposition:
        """Scrape until every series in `wanted` has its value (a failure shows the agent's figures)."""

        def reached(found: Exposition) -> bool:
            return all(found.at(series) == value for series, value in wanted.items())

        def read() -> Exposition:
            try:
                return scrape(self.port)
            except (urllib.error.URLError, ConnectionError):
                return Exposition({}, [], [])  # not serving yet

        return await eventually(lambda: asyncio.to_thread(read), what, timeout_s=timeout_s, every_s=0.3, until=reached)


@pytest.fixture
async def agent(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[Agent]:
    nc = await logins.connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    await ensure_streams(nc.jetstream())
    watch = Watch()
    await watch.start(nc)
    port = free_port()
    settings = {
        "node_name": "n1",
        "cluster_id": "c1",
        "driver": "sim",
        "sim_faults": "upgrade_fails_once",
        "sim_step_s": "0.05",
        "heartbeat_interval_s": "0.2",
        "ack_wait_s": "3",
        "fetch_timeout_s": "1",
        "verify_timeout_s": "5",
        "http_port": str(port),
    }
    process = start_service(Service.NODE_AGENT, nats_server.url, tmp_path, **settings)
    try:
        yield Agent(nc, watch, port, process, tmp_path)
    finally:
        process.terminate()
        process.wait(15)
        await nc.close()


def steps(step: StepKind, outcome: str) -> str:
    return f'flotilla_node_agent_steps_total{{step="{step.value}",outcome="{outcome}"}}'


async def run(agent: Agent, step: StepKind, **fields: object) -> StepOutcome:
    """Send one step command to n1 and wait for its final report."""
    command = step_command(step, **fields)
    await send(agent.nc, command)
    await agent.watch.until(lambda: agent.watch.final(step, command_id=command.command_id), within_s=20)
    first: StepOutcome = agent.watch.final(step, command_id=command.command_id)[0].outcome
    return first


async def test_steps_refusals_dead_letters_and_heartbeats_move_on_the_agents_metrics(agent: Agent) -> None:
    start = await agent.scraped(
        {"flotilla_service_ready": 1, steps(StepKind.CORDON, "succeeded"): 0}, "the agent serving, every step at 0"
    )
    # Every (step, outcome) and every refusal reason is a series from the start: an alert sees it leave 0.
    for step in StepKind:
        for outcome in ("succeeded", "failed", "refused"):
            assert steps(step, outcome) in start.samples, steps(step, outcome)
    for reason in ("stale_epoch", "deadline_passed", "wrong_node", "precondition_failed"):
        assert f'flotilla_node_agent_commands_refused_total{{reason="{reason}"}}' in start.samples, reason
    assert start.at('flotilla_node_agent_evictions_total{result="blocked"}') == 0  # the sim driver evicts nothing
    assert 'flotilla_node_agent_evictions_total{result="evicted"}' in start.samples

    assert await run(agent, StepKind.CORDON, epoch=5) is StepOutcome.SUCCEEDED
    assert await run(agent, StepKind.DRAIN, epoch=4) is StepOutcome.REFUSED  # stale epoch (I6)
    past = datetime.now(UTC) - timedelta(seconds=1)
    assert await run(agent, StepKind.DRAIN, epoch=5, deadline=past, attempt=9) is StepOutcome.REFUSED
    assert await run(agent, StepKind.DRAIN, epoch=5) is StepOutcome.SUCCEEDED
    assert await run(agent, StepKind.UPGRADE, epoch=5) is StepOutcome.FAILED  # the sim's upgrade_fails_once
    for step in STEPS[2:]:
        assert await run(agent, step, epoch=5, attempt=2) is StepOutcome.SUCCEEDED, step
    # Bad input: undecodable, and a command for n2 on n1's subject (refused as not for this node).
    good = step_command(StepKind.CORDON, epoch=5)
    await send(agent.nc, good, body=b"{not json")
    await send(agent.nc, step_command(StepKind.CORDON, node="n2"), subject=subjects.agent_command("c1", "n1", "step"))
    await agent.watch.until(lambda: len(agent.watch.dead) == 2)

    wanted = {
        **{steps(step, "succeeded"): 1 for step in STEPS},
        steps(StepKind.UPGRADE, "failed"): 1,
        steps(StepKind.DRAIN, "refused"): 2,
        steps(StepKind.CORDON, "refused"): 1,  # the one for n2
        'flotilla_node_agent_commands_refused_total{reason="stale_epoch"}': 1,
        'flotilla_node_agent_commands_refused_total{reason="deadline_passed"}': 1,
        'flotilla_node_agent_commands_refused_total{reason="wrong_node"}': 1,
        **{
            f'flotilla_node_agent_step_duration_seconds_count{{step="{s.value}"}}': 1
            for s in STEPS
            if s is not StepKind.UPGRADE
        },
        'flotilla_node_agent_step_duration_seconds_count{step="upgrade"}': 2,  # failed, then succeeded
        f'flotilla_dead_letters_total{{{CONSUMER},reason="malformed"}}': 1,
        f'flotilla_dead_letters_total{{{CONSUMER},reason="subject_mismatch"}}': 1,
        f'flotilla_events_total{{{CONSUMER},outcome="handled"}}': 8,  # 6 executed (one failed), 2 refused
        f'flotilla_events_total{{{CONSUMER},outcome="dead_lettered"}}': 2,
    }
    found = await agent.scraped(wanted, "the steps, refusals and dead letters counted")
    assert found.at(steps(StepKind.ROLLBACK, "succeeded")) == 0
    assert found.at('flotilla_node_agent_step_duration_seconds_sum{step="cordon"}') > 0
    assert found.at("flotilla_node_agent_heartbeats_sent_total") > 0
    assert found.at("flotilla_node_agent_heartbeat_failures_total") == 0
    # Stable label values only: no durable (agent-2-c1-n1), cluster or node id in any series.
    ids = [s for s in found.series if any(token in s for token in ('"c1"', '"n1"', '"n2"', "agent-2-"))]
    assert ids == []
    beats = found.at("flotilla_node_agent_heartbeats_sent_total")
    await eventually(
        lambda: asyncio.to_thread(scrape, agent.port),
        "heartbeats going on",
        timeout_s=10,
        until=lambda now: now.at("flotilla_node_agent_heartbeats_sent_total") > beats,
    )


async def test_a_server_restart_rebuilds_the_connection_and_the_figures_go_on_once(
    agent: Agent, nats_server: NatsServer
) -> None:
    assert await run(agent, StepKind.CORDON) is StepOutcome.SUCCEEDED
    before = await agent.scraped({steps(StepKind.CORDON, "succeeded"): 1}, "the cordon counted")
    assert before.at("flotilla_bus_reconnects_total") == 0

    nats_server.stop()
    nats_server.start()  # same port, same JetStream folder: the agent's connection comes back
    await agent.scraped({"flotilla_bus_reconnects_total": 1, "flotilla_bus_connected": 1}, "the agent reconnected")
    assert await run(agent, StepKind.DRAIN) is StepOutcome.SUCCEEDED, service_log(agent.state, Service.NODE_AGENT)

    after = await agent.scraped(
        {steps(StepKind.CORDON, "succeeded"): 1, steps(StepKind.DRAIN, "succeeded"): 1},
        "both steps counted once, across the reconnect",
    )
    assert after.at("flotilla_node_agent_heartbeats_sent_total") > before.at(
        "flotilla_node_agent_heartbeats_sent_total"
    )
    # A valid exposition: each family once, each series once.
    assert len(after.families) == len(set(after.families)), after.families
    assert len(after.series) == len(set(after.series)), [s for s in after.series if after.series.count(s) > 1]
    assert agent.process.poll() is None
