"""`python -m flotilla_node_agent.fleet_sim`: a simulated fleet of N clusters x M nodes against any Flotilla bus.

Every node runs the real agent code (journal, durable command consumer, heartbeats) over the simulated
driver; all agents share one NATS connection, one SQLite journal and one outbox relay. The first node of
each cluster is its control plane and its cluster agent: it joins with the token, waits for approval,
and reports the nodes. Versions are dealt to clusters round-robin; faults are drawn per node from the
seed, so a run is repeatable. `--fault NODE=FAULT` places a fault as if drawn (its budget or crash point
from the node's seed); a bad one is refused at once, by the rule `flotilla sim` checks too.

Restarted (same --state-dir and --prefix), nodes come back as left: the journal keeps their steps and
driver state (versions, cordon, pods), saved before a step is reported done. Faults are drawn again from
the seed, but as on a real node one that fired stays spent (a crash point crashes once,
`upgrade_fails_once` fails once) and a lasting one holds (blocked drain, failing upgrade, NotReady).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext

from flotilla_contracts import sim as names
from flotilla_contracts.ids import node_token
from flotilla_contracts.v1.agent import NodeFacts
from flotilla_contracts.v1.common import NodeRole
from flotilla_node_agent import __version__, sim_beats, sim_metrics
from flotilla_node_agent.apply_backends import SimApplyBackend
from flotilla_node_agent.bus_login import connect_as
from flotilla_node_agent.cluster_agent import ClusterAgent, ClusterHandle
from flotilla_node_agent.cluster_setup import build_cluster_agent, fleet_cluster_identity
from flotilla_node_agent.drivers.sim import SimDriver, SimNodeSpec
from flotilla_node_agent.heartbeats import Interval
from flotilla_node_agent.journal import Journal
from flotilla_node_agent.node_agent import AgentContext, NodeAgent, NodeConnector
from flotilla_node_agent.sim_args import FleetSpec, parse
from flotilla_node_agent.sim_links import FleetRoutes, node_connector
from flotilla_node_agent.sim_states import SimNodeStates
from flotilla_runtime import telemetry
from flotilla_runtime.bus import connect_options, ensure_streams
from flotilla_runtime.integrity import EXIT_REFUSED, StateRefused
from flotilla_runtime.lifeline import Lifeline, LinkState
from flotilla_runtime.logins import LoginGate
from flotilla_runtime.logs import get_logger, setup_logging
from flotilla_runtime.migrations import load_migrations
from flotilla_runtime.outbox import OutboxRelay
from flotilla_runtime.store import Store


def node_specs(spec: FleetSpec, index: int) -> list[SimNodeSpec]:
    """The nodes of the fleet's cluster number `index`, drawn from the seed, with the faults `--fault` places."""
    cluster = cluster_name(spec, index)
    return [
        SimNodeSpec.generate(
            spec.seed,
            cluster,
            i,
            version=spec.versions[index % len(spec.versions)],
            fail_rate=spec.fail_rate,
            role=NodeRole.CONTROL_PLANE if i == 0 else NodeRole.WORKER,
            step_s=spec.step_s,
            named=tuple(fault for node, fault in spec.faults if node == names.node_name(cluster, i)),
        )
        for i in range(spec.nodes)
    ]


@dataclass
class Fleet:
    """A running simulated fleet: its agents, cluster agents and shared pieces."""

    spec: FleetSpec
    store: Store
    relay: OutboxRelay
    nc: Any
    agents: list[NodeAgent] = field(default_factory=list)
    cluster_agents: list[ClusterAgent] = field(default_factory=list)
    handles: list[ClusterHandle] = field(default_factory=list)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    # each connection's state, by cluster (or "shared"), and by "<cluster>/<node>" for the nodes' own
    links: dict[str, Lifeline] = field(default_factory=dict)
    gate: LoginGate | None = None  # the bound on this process's logins in flight

    def counts(self) -> dict[str, int]:
        consumers = [a.consumer for a in self.agents if a.consumer is not None]
        links = list(self.links.values())
        return {
            "links_connected": sum(link.state is LinkState.CONNECTED for link in links),
            "links_refused": sum(link.state is LinkState.REFUSED for link in links),
            "reconnects": sum(link.stats.reconnects for link in links),
            "grants_expired": sum(link.stats.grants_expired for link in links),
            "clusters_approved": sum(h.approved.is_set() for h in self.handles),
            "agents_ready": sum(a.ready.is_set() for a in self.agents),
            "steps_executed": sum(c.stats.executed for c in consumers),
            "dead_lettered": sum(c.stats.dead_lettered for c in consumers),
            "heartbeats_sent": sum(a.heartbeat.seq for a in self.agents if a.heartbeat is not None),
            "reports_sent": sum(c.reports_sent for c in self.cluster_agents),
            "logins_in_flight": self.gate.in_flight if self.gate else 0,
            "logins_waiting": self.gate.waiting if self.gate else 0,
            "login_window": int(self.gate.window) if self.gate else 0,
            "logins_slow": self.gate.slow if self.gate else 0,
        }

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await drain_outbox(self.store)
        await self.relay.stop(flush_timeout_s=5.0)
        for link in self.links.values():
            link.stop()
        every = [
            self.nc,
            *(h.nc for h in self.handles),
            *(a.nc for a in self.cluster_agents),
            *(a.nc for a in self.agents),
        ]
        connections = {id(c): c for c in every}
        for connection in connections.values():
            if connection is not None:
                with contextlib.suppress(Exception):
                    await connection.drain()
        await self.store.close()


async def drain_outbox(store: Store, timeout_s: float = 5.0) -> None:
    """Wait until the relay has published everything, so stopping it never cancels it mid-transaction
    (the runtime's Store.delete_outbox is not cancellation-safe: an open transaction would be left)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        if not await store.outbox_size():
            return
        await asyncio.sleep(0.05)


async def keep_interval_fresh(interval: Interval, nc: Client | None, handles: list[ClusterHandle]) -> None:
    """Ask the heartbeat service for its interval, over the shared connection or the first cluster's."""
    if nc is None:
        waits = [asyncio.ensure_future(h.approved.wait()) for h in handles]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        nc = next(h.nc for h in handles if h.nc is not None)
    assert nc is not None
    await interval.keep_fresh(nc)


def cluster_name(spec: FleetSpec, index: int) -> str:
    return names.cluster_name(spec.prefix, index)


async def start_fleet(spec: FleetSpec, nats_url: str) -> Fleet:
    """Connect, open the journal, create every agent and start them; returns at once (agents start up).

    With a join token each cluster joins and then speaks over its own connection, authenticated by its
    credential (the bus grants it only its own subjects). Without one, the clusters are given their ids
    and share one connection (benchmarks, tests without registration).
    """
    per_cluster = bool(spec.token)
    nc: Client | None = None
    js: JetStreamContext | None = None
    links: dict[str, Lifeline] = {}
    if not per_cluster:
        shared = links["shared"] = Lifeline(f"flotilla-sim-{spec.prefix}")
        nc = await nats.connect(
            nats_url,
            name=f"flotilla-sim-{spec.prefix}",
            pending_size=64 * 1024 * 1024,
            **shared.options(),
            **connect_options(nats_url),
        )
        shared.attach(nc)
        js = nc.jetstream()
        await ensure_streams(js)
    journal = spec.state_dir / f"{spec.prefix}-journal.db"  # holds the clusters' credentials: 0600 in a 0700 folder
    store = await Store.open(journal, load_migrations("flotilla_node_agent", "node-agent"), service="node-agent")
    states = await SimNodeStates.load(store)
    handles: list[ClusterHandle] = []
    routes = FleetRoutes(handles)
    relay = OutboxRelay(store, js if js is not None else routes, batch=512)
    relay.start()
    interval = Interval(spec.heartbeat_interval_s)
    ctx = AgentContext(
        nc=nc,
        js=js,
        store=store,
        interval=interval,
        journal=Journal(),
        instance_id=spec.prefix,
        verify_timeout_s=30.0,
        subscribe_gate=asyncio.Semaphore(32),
        heartbeats=not spec.batch_heartbeats,
    )
    gate = LoginGate(spec.logins_in_flight)
    fleet = Fleet(spec, store, relay, nc, handles=handles, links=links, gate=gate)
    fleet.tasks.append(asyncio.create_task(keep_interval_fresh(interval, nc, handles)))
    log = get_logger("flotilla.sim")
    for c in range(spec.clusters):
        name = cluster_name(spec, c)
        drivers = [SimDriver(node, keeper=states) for node in node_specs(spec, c)]
        version = drivers[0].state.kubelet_version  # the control plane's, as it was left at the last stop
        handle = ClusterHandle("" if spec.token else name)
        fleet.handles.append(handle)
        if spec.token:
            identity = fleet_cluster_identity(spec.seed, name, version)

            async def facts(drivers: Sequence[SimDriver] = drivers) -> list[NodeFacts]:
                return [await d.facts() for d in drivers]

            link = links[name] = Lifeline(f"flotilla-sim-{name}", gate=gate)

            async def connector(user: str, password: str, name: str = name, link: Lifeline = link) -> Client:
                return await connect_as(nats_url, user, password, f"flotilla-sim-{name}", link)

            agent = build_cluster_agent(
                identity,
                spec.token,
                facts,
                log.bind(cluster=name),
                store=store,
                journal=ctx.journal,
                nc=nc,
                handle=handle,
                connector=connector,
                workloads=SimApplyBackend(),
                js=js,
                instance_id=spec.prefix,
                report_every_s=spec.heartbeat_interval_s,
                subscribe_gate=ctx.subscribe_gate,
            )
            fleet.cluster_agents.append(agent)
            fleet.tasks.append(asyncio.create_task(agent.run()))
        for driver in drivers:
            own: NodeConnector | None = None
            if spec.token:  # each node logs in as itself, with its own key (sim_links)
                node = node_token(driver.node_name)
                node_link = links[f"{name}/{node}"] = Lifeline(f"flotilla-sim-{node}", gate=gate)
                own = node_connector(nats_url, store, agent, node, node_link, log.bind(cluster=name))
            node_agent = NodeAgent(ctx, driver, handle, own)
            routes.nodes[node_agent.node_id] = node_agent
            fleet.agents.append(node_agent)
            fleet.tasks.append(asyncio.create_task(node_agent.run()))
        if spec.batch_heartbeats:  # over the cluster's own connection (its identity), else the shared one
            members = fleet.agents[-len(drivers) :]
            fleet.tasks.append(asyncio.create_task(sim_beats.run(handle, members, interval, log, ctx.metrics, nc)))
    return fleet


async def amain(argv: Sequence[str] | None = None) -> None:
    spec, args = parse(argv)
    setup_logging("node-agent-sim", args.log_level, "text")
    # The agents' spans (steps, continuing the rollout's trace) leave when OTEL_EXPORTER_OTLP_ENDPOINT is set.
    telemetry.setup_tracing("node-agent", __version__, f"sim-{spec.prefix}", sample_ratio=1.0)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    started = time.monotonic()
    fleet = await start_fleet(spec, args.server)
    served = None
    if args.metrics_port >= 0:
        served = await sim_metrics.serve(args.metrics_port, spec.clusters, spec.nodes, fleet.counts)
        logging.getLogger("flotilla.sim").warning("metrics on %s/metrics", served.url)
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), args.stats_every)
            line = {"t": round(time.monotonic() - started, 1), **fleet.counts(), **sim_metrics.usage()}
            print(json.dumps(line), flush=True)  # noqa: T201 - the status line is this tool's output
            if args.duration and time.monotonic() - started >= args.duration:
                break
    finally:
        if served is not None:
            await served.stop()
        await fleet.stop()
        telemetry.shutdown_tracing()
    logging.getLogger("flotilla.sim").info("stopped")


def main() -> None:
    try:
        asyncio.run(amain())
    except KeyboardInterrupt:
        sys.exit(130)
    except StateRefused as exc:  # a damaged journal: restarting alone will not help
        logging.getLogger("flotilla.sim").error("%s", exc)
        sys.exit(EXIT_REFUSED)


if __name__ == "__main__":
    main()
