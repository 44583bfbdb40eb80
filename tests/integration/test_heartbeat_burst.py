"""A fleet coming up at once (issue 21 item 4): every node is first seen in the same round, on a real nats-server.

Each first-seen node is an event through the heartbeat service's outbox while the heartbeats keep coming. The
service must not be cut off by nats-server as a slow consumer nor drop heartbeats, every node that kept its
schedule is Ready with exactly one event (its first-seen one: any wrong verdict would add a second), and all of
them reach FLEET_EVENTS. Small by default (3,000 nodes at 1 s); `slow`: 100,000 nodes at 10 s. And when nats-server
does cut a stalled service off, nobody is blamed for the silence that caused.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import nats
import nats.errors
import pytest
from nats.aio.client import Client
from nats.js.api import ConsumerConfig

from flotilla_client.loadgen import LoadGenerator, cluster_ids
from flotilla_client.natsserver import NatsServer, free_port
from flotilla_contracts.catalogue import subject_for
from flotilla_contracts.envelope import H_MSG_ID, H_SCHEMA, schema_id
from flotilla_contracts.streams import FLEET_EVENTS
from flotilla_contracts.subjects import Service, command
from flotilla_contracts.v1.registration import ApprovalSource, ClusterIdentity, ClusterInfo, ClusterState
from flotilla_contracts.v1.registration_events import ClusterApproved
from flotilla_heartbeat.app import SPEC
from flotilla_heartbeat.settings import Settings
from flotilla_runtime import logins, service
from flotilla_runtime.bus import ensure_streams
from flotilla_runtime.lifeline import LinkState
from flotilla_testkit import ConditionNotMet, eventually

pytestmark = pytest.mark.integration


async def approve(nc: Client, clusters: list[str]) -> None:
    """Registration's ClusterApproved for each cluster, pipelined."""
    js = nc.jetstream()
    now = datetime.now(UTC)
    for start in range(0, len(clusters), 2000):
        acks = []
        for cluster in clusters[start : start + 2000]:
            identity = ClusterIdentity(uid=cluster, name=cluster, kubernetes_version="v1.30.4")
            info = ClusterInfo(
                cluster_id=cluster, identity=identity, state=ClusterState.APPROVED, joined_at=now, updated_at=now
            )
            event = ClusterApproved(cluster=info, approved_by=ApprovalSource.ADMIN, occurred_at=now)
            headers = {H_SCHEMA: schema_id(ClusterApproved), H_MSG_ID: uuid.uuid4().hex}
            subject = subject_for(ClusterApproved, cluster_id=cluster)
            acks.append(await js.publish_async(subject, msgspec.json.encode(event), headers=headers))
        await asyncio.gather(*acks)


@contextlib.asynccontextmanager
async def replica(url: str, state: Path, **overrides: Any) -> AsyncIterator[service.ServiceApp[Settings]]:
    """The heartbeat service in this process (its own connection); yields its app once it serves."""
    apps: list[service.ServiceApp[Settings]] = []

    async def capture(app: service.ServiceApp[Settings]) -> None:
        apps.append(app)
        await SPEC.setup(app)

    spec = service.ServiceSpec(**{**SPEC.__dict__, "setup": capture})
    settings = Settings(
        nats_url=url, state_dir=str(state), instance_id="burst", log_format="text", log_level="WARNING", **overrides
    )
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(spec, settings, stop))
    await eventually(lambda: apps and apps[0].ready, "the heartbeat service ready", timeout_s=30)
    try:
        yield apps[0]
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


NODE_EVENTS = "fleet.v1.evt.node-health.>"


async def node_events(nc: Client) -> dict[str, int]:
    """Node health events in FLEET_EVENTS, by subject (one subject per node)."""
    info = await nc.jetstream().stream_info(FLEET_EVENTS.name, subjects_filter=NODE_EVENTS)
    return dict(info.state.subjects or {})


async def node_event_count(nc: Client) -> int:
    """How many node health events FLEET_EVENTS holds (a filtered consumer's pending count: cheap to ask)."""
    js = nc.jetstream()
    consumer = await js.add_consumer(FLEET_EVENTS.name, ConsumerConfig(filter_subject=NODE_EVENTS))
    try:
        return int((await js.consumer_info(FLEET_EVENTS.name, consumer.name)).num_pending)
    finally:
        await js.delete_consumer(FLEET_EVENTS.name, consumer.name)


async def burst(server: NatsServer, state: Path, clusters: int, nodes: int, interval_s: float) -> None:
    nc = await logins.connect(server.url)
    await ensure_streams(nc.jetstream())
    ids = cluster_ids(clusters, "burst")
    await approve(nc, ids)
    total = clusters * nodes
    timing = {"interval_s": interval_s, "missed_intervals": 3, "flap_window_s": 3 * interval_s, "tick_s": 0.1}
    async with replica(server.url, state, startup_grace_s=0.0, **timing) as app:
        hb: Any = app.heartbeats  # type: ignore[attr-defined]
        await eventually(lambda: len(hb.model.clusters) == clusters, f"{clusters} approved clusters tracked")
        sender = await logins.connect(server.url, pending_size=256 * 1024 * 1024)
        gen = LoadGenerator(sender, ids, nodes, interval_s=interval_s, slices=20)
        load = asyncio.create_task(gen.run())
        started = time.monotonic()

        async def summary() -> dict[str, Any]:
            reply = await nc.request(command(Service.HEARTBEAT, "health.summary"), b"{}", timeout=10)
            data: dict[str, Any] = msgspec.json.decode(reply.data)["data"]["nodes"]
            return data

        unanswered = (nats.errors.NoRespondersError, nats.errors.TimeoutError)  # judged below: disconnects
        await eventually(
            summary, f"{total:,} nodes Ready", until=lambda s: s["ready"] == total, timeout_s=120, retrying=unanswered
        )
        ready_s = time.monotonic() - started
        await eventually(
            lambda: node_event_count(nc),
            f"{total:,} first-seen events in FLEET_EVENTS",
            until=lambda count: count >= total,
            timeout_s=120,
            every_s=0.5,
        )
        published_s = time.monotonic() - started
        events = await node_events(nc)
        nodes_now = await summary()
        gen.stop()
        await load
        late_s = gen.stats.late_s
        link = app.lifeline.stats
        exposed = (await app.metrics.render()).splitlines()  # what /metrics serves
        dropped = next(line for line in exposed if line.startswith("flotilla_heartbeat_slow_consumer_drops_total"))
        await sender.close()
    await nc.close()
    load_avg = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    print(  # figures for the note (run with -s); nothing here is asserted
        f"\n{total:,} nodes first seen at once ({total / interval_s:,.0f} heartbeats/s): all Ready in {ready_s:.1f}s, "
        f"every first-seen event in FLEET_EVENTS in {published_s:.1f}s ({total / published_s:,.0f} events/s); "
        f"load average {load_avg}"
    )
    assert late_s < interval_s, f"the load generator fell {late_s:.1f}s behind its schedule: nothing to judge"
    log = server.log_file.read_text() if server.log_file and server.log_file.exists() else ""
    cut = [line for line in log.splitlines() if "Slow Consumer" in line]
    assert link.disconnects == 0, f"the heartbeat service lost its connection; nats-server says: {cut[:3]}"
    assert dropped.split()[-1] in ("0", "0.0"), f"heartbeats dropped before the service read them: {dropped}"
    assert len(events) == total, f"{len(events):,} of {total:,} nodes have an event"
    assert nodes_now == {"ready": total, "not_ready": 0, "unreachable": 0, "lost": 0}, nodes_now
    twice = {subject: count for subject, count in events.items() if count != 1}
    assert twice == {}, f"nodes with more than their first-seen event: {list(twice.items())[:5]}"


async def test_a_fleet_first_seen_at_once_is_ready_with_one_event_each(nats_server: NatsServer, tmp_path: Path) -> None:
    await burst(nats_server, tmp_path / "hb", clusters=300, nodes=10, interval_s=1.0)


@pytest.mark.slow
async def test_a_hundred_thousand_nodes_first_seen_at_once(nats_server: NatsServer, tmp_path: Path) -> None:
    await burst(nats_server, tmp_path / "hb", clusters=10_000, nodes=10, interval_s=10.0)


async def test_cut_off_as_a_slow_consumer_the_service_holds_its_verdicts(tmp_path: Path) -> None:
    """nats-server closes the connection of a client that does not read (past `max_pending` or its write deadline:
    it never drops single messages for a client). The service, stalled, is cut off; it reconnects, and the
    silence it was cut off for is its own: no node is judged Unreachable for it (deafness.py)."""
    server = NatsServer(
        state_dir=tmp_path / "nats",
        port=free_port(),
        log_file=tmp_path / "nats-server.log",
        extra_config='max_pending: 1048576\nwrite_deadline: "1s"\n',  # the least nats-server takes: max_payload
    )
    server.start()
    try:
        nc = await logins.connect(server.url)
        await ensure_streams(nc.jetstream())
        clusters, nodes, interval_s = 200, 20, 0.5  # 8,000 heartbeats/s: enough to fill 1 MB in a stall
        await approve(nc, cluster_ids(clusters, "cut"))
        timing = {"interval_s": interval_s, "missed_intervals": 3, "flap_window_s": 1.5, "tick_s": 0.1}
        async with replica(server.url, tmp_path / "hb", startup_grace_s=5.0, **timing) as app:
            args = ["--server", server.url, "--clusters", str(clusters), "--nodes", str(nodes), "--prefix", "cut"]
            sender = await asyncio.create_subprocess_exec(  # its own process: it keeps sending while this one stalls
                sys.executable,
                "-m",
                "flotilla_client.loadgen",
                *args,
                "--interval",
                str(interval_s),
                stdout=asyncio.subprocess.DEVNULL,
            )
            try:
                total = clusters * nodes
                await eventually(
                    lambda: node_event_count(nc), "every node first seen", until=lambda n: n >= total, timeout_s=60
                )
                for _ in range(10):  # stalls until nats-server cuts the service off (a loaded sender needs more)
                    time.sleep(3.0)  # noqa: ASYNC251  # sleep: the stall under test (a starved process), not a wait
                    with contextlib.suppress(ConditionNotMet):
                        await eventually(lambda: app.lifeline.stats.disconnects, "a cut-off", timeout_s=3)
                        break
                await eventually(lambda: app.lifeline.state is LinkState.CONNECTED, "the service back on the bus")
                # Three intervals after the grace would have run out without the hold: every node was judged again.
                await asyncio.sleep(5.0 + 3 * interval_s)  # sleep: a period to wait out, not a condition
                events = await node_events(nc)
            finally:
                sender.terminate()
                await sender.wait()
        await nc.close()
        log = server.log_file.read_text() if server.log_file else ""
    finally:
        server.stop()
    assert "Slow Consumer" in log, "nats-server did not cut the service off: nothing was tested"
    twice = {subject: count for subject, count in events.items() if count != 1}
    assert len(events) == total and twice == {}, f"judged for the service's own deafness: {list(twice.items())[:5]}"
