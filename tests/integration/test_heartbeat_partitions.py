"""Two heartbeat replicas split the fleet by a NATS subject mapping; real nats-server, services in-process."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner
from nats.aio.client import Client
from nats.js.api import DeliverPolicy

from flotilla_client.cli.common import CliContext
from flotilla_client.cli.health import health
from flotilla_client.loadgen import LoadGenerator, cluster_ids
from flotilla_client.natsserver import NatsServer, free_port
from flotilla_contracts import subjects
from flotilla_contracts.catalogue import subject_for
from flotilla_contracts.envelope import H_MSG_ID, H_SCHEMA, Message, schema_id
from flotilla_contracts.subjects import Service, command
from flotilla_contracts.v1.registration import ApprovalSource, ClusterIdentity, ClusterInfo, ClusterState
from flotilla_contracts.v1.registration_events import ClusterApproved, ClusterDeregistered, ClusterJoinRequested
from flotilla_heartbeat.app import SPEC
from flotilla_heartbeat.partitions import mapping_config
from flotilla_heartbeat.settings import Settings
from flotilla_runtime import logins, service
from flotilla_runtime.bus import ensure_streams
from flotilla_testkit import eventually

pytestmark = pytest.mark.integration

FAST = {
    "interval_s": 0.5,
    "missed_intervals": 3,
    "lost_after_s": 30.0,
    "startup_grace_s": 0.0,
    "flap_window_s": 1.0,
    "tick_s": 0.05,
    "noise_window_s": 1.0,
    "checkpoint_interval_s": 0.5,
    "log_format": "text",
    "log_level": "WARNING",
}


def cluster_event(kind: type[Message], cluster_id: str, state: ClusterState) -> Message:
    now = datetime.now(UTC)
    info = ClusterInfo(
        cluster_id=cluster_id,
        identity=ClusterIdentity(uid=cluster_id, name=cluster_id.lower(), kubernetes_version="v1.30.4"),
        state=state,
        joined_at=now,
        updated_at=now,
    )
    if kind is ClusterApproved:
        return ClusterApproved(cluster=info, approved_by=ApprovalSource.ADMIN, occurred_at=now)
    if kind is ClusterDeregistered:
        return ClusterDeregistered(cluster=info, occurred_at=now)
    return ClusterJoinRequested(cluster=info, occurred_at=now)


async def publish_event(nc: Client, event: Message, **ids: str) -> None:
    headers = {H_SCHEMA: schema_id(type(event)), H_MSG_ID: uuid.uuid4().hex}
    await nc.jetstream().publish(subject_for(type(event), **ids), msgspec.json.encode(event), headers=headers)


async def request(nc: Client, verb: str, body: dict[str, Any] | None = None) -> Any:
    reply = await nc.request(command(Service.HEARTBEAT, verb), msgspec.json.encode(body or {}), timeout=5)
    decoded = msgspec.json.decode(reply.data)
    assert decoded["ok"], decoded
    return decoded["data"]


@contextlib.asynccontextmanager
async def replica(url: str, state: Path, **overrides: Any) -> AsyncIterator[service.ServiceApp[Settings]]:
    """One heartbeat replica in this process; yields its app once it serves."""
    apps: list[service.ServiceApp[Settings]] = []
    original = SPEC.setup

    async def capture(app: service.ServiceApp[Settings]) -> None:
        apps.append(app)
        await original(app)

    spec = service.ServiceSpec(**{**SPEC.__dict__, "setup": capture})
    settings = Settings(nats_url=url, state_dir=str(state), instance_id=state.name, **{**FAST, **overrides})
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(spec, settings, stop))
    await eventually(lambda: apps and apps[0].ready, "the replica to be ready", timeout_s=10)
    try:
        yield apps[0]
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


@pytest.fixture
def mapped_server(tmp_path: Path) -> Any:
    server = NatsServer(state_dir=tmp_path / "nats", port=free_port(), extra_config=mapping_config(2))
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_two_replicas_split_the_fleet_detect_a_stopped_node_and_answer_for_the_whole_fleet(
    mapped_server: NatsServer, tmp_path: Path
) -> None:
    nc = await logins.connect(mapped_server.url)
    await ensure_streams(nc.jetstream())
    clusters = cluster_ids(6, "it")
    for cluster in clusters:
        await publish_event(nc, cluster_event(ClusterApproved, cluster, ClusterState.APPROVED), cluster_id=cluster)
    await publish_event(
        nc, cluster_event(ClusterJoinRequested, "it-pending", ClusterState.PENDING), cluster_id="it-pending"
    )
    health_events: list[dict[str, Any]] = []

    async def on_event(msg: Any) -> None:
        health_events.append({"subject": msg.subject, **msgspec.json.decode(msg.data)})

    await nc.jetstream().subscribe("fleet.v1.evt.>", cb=on_event, ordered_consumer=True)
    by_partition = {p: [c for c in clusters if subjects.partition_of(c, 2) == p] for p in (0, 1)}
    assert by_partition[0] and by_partition[1], "the ids must land in both partitions"
    async with (
        replica(mapped_server.url, tmp_path / "r0", partition_count=2, partitions="0") as r0,
        replica(mapped_server.url, tmp_path / "r1", partition_count=2, partitions="1") as r1,
    ):
        gen = LoadGenerator(nc, [*clusters, "it-pending", "it-stranger"], 3, interval_s=0.5, slices=5)
        load = asyncio.create_task(gen.run())

        async def all_ready() -> bool:
            data = await request(nc, "health.summary")
            return bool(data["nodes"]["ready"] == 18 and data["clusters"].get("Ready") == 6)

        await eventually(all_ready, "18 nodes and 6 clusters Ready", timeout_s=10)
        summary = await request(nc, "health.summary")
        assert summary["partitions"] == [0, 1] and summary["partition_count"] == 2
        cli = CliContext(state_dir=tmp_path, server_flag=mapped_server.url)
        shown = await asyncio.to_thread(CliRunner().invoke, health, ["-o", "json"], obj=cli)
        assert shown.exit_code == 0, shown.output
        assert msgspec.json.decode(shown.output)["nodes"]["ready"] == 18
        table = await asyncio.to_thread(CliRunner().invoke, health, [], obj=cli)
        assert "Ready 6" in table.output and "every cluster is Ready" in table.output, table.output
        for app, mine in ((r0, by_partition[0]), (r1, by_partition[1])):
            assert sorted(app.heartbeats.model.clusters) == sorted(mine)  # type: ignore[attr-defined]
        far = by_partition[1][0]  # asked to any replica, answered by the owner of partition 1
        nodes = await request(nc, "health.nodes", {"cluster_id": far})
        assert [n["node_id"] for n in nodes["nodes"]] == ["n0000", "n0001", "n0002"]
        assert {n["state"] for n in nodes["nodes"]} == {"Ready"}
        page1 = await request(nc, "health.clusters", {"limit": 4})
        page2 = await request(nc, "health.clusters", {"limit": 4, "cursor": page1["next_cursor"]})
        assert [c["cluster_id"] for c in page1["clusters"] + page2["clusters"]] == sorted(clusters)
        assert page2["next_cursor"] == ""

        stopped_cluster = by_partition[0][0]
        gen.stop_node(stopped_cluster, "n0001")

        async def unreachable() -> bool:
            return any(
                e.get("to") == "Unreachable" and e.get("node_id") == "n0001" and e["cluster_id"] == stopped_cluster
                for e in health_events
            )

        await eventually(unreachable, "n0001 of the stopped cluster Unreachable", timeout_s=5)
        config = await request(nc, "config.get")
        assert config["interval_s"] == 0.5 and config["partition_count"] == 2

        async def noise_reported() -> bool:
            reasons = {
                e["cluster_id"]: e["reason"]
                for e in health_events
                if e["subject"].startswith("fleet.v1.evt.heartbeat-noise.")
            }
            return reasons.get("it-stranger") == "unknown_cluster" and reasons.get("it-pending") == "pending_cluster"

        await eventually(noise_reported, "noise reports for it-stranger and it-pending", timeout_s=5)
        seen_under_load = list(health_events)
        gen.stop()
        await load
    await nc.close()
    node_changes = [e for e in seen_under_load if e["subject"].startswith("fleet.v1.evt.node-health.")]
    spurious = [e for e in node_changes if e["from"] is not None and e["node_id"] != "n0001"]
    assert spurious == [], [(e["cluster_id"], e["node_id"], e["from"], e["to"], e["occurred_at"]) for e in spurious]
    noise = [e for e in seen_under_load if e["subject"].startswith("fleet.v1.evt.heartbeat-noise.")]
    windows = [(e["cluster_id"], e["window_start"]) for e in noise]
    assert len(windows) == len(set(windows)), "at most one report per cluster per window"
    assert not any(e["cluster_id"] in ("it-stranger", "it-pending") for e in node_changes)


async def test_a_restart_keeps_health_and_marks_nothing_down_during_the_grace(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    nc = await logins.connect(nats_server.url)
    await ensure_streams(nc.jetstream())
    clusters = cluster_ids(2, "rs")
    for cluster in clusters:
        await publish_event(nc, cluster_event(ClusterApproved, cluster, ClusterState.APPROVED), cluster_id=cluster)
    state = tmp_path / "hb"
    gen = LoadGenerator(nc, clusters, 2, interval_s=0.5, slices=2)
    load = asyncio.create_task(gen.run())
    async with replica(nats_server.url, state):
        await eventually(lambda: _ready_count(nc, 4), "4 nodes Ready", timeout_s=10)
        # What a restart reads back:
        await eventually(lambda: _checkpointed_ready(state) == 4, "4 Ready nodes checkpointed", timeout_s=10)
    gen.stop()
    await load
    events: list[dict[str, Any]] = []

    async def on_event(msg: Any) -> None:
        if "-health." in msg.subject:
            events.append(msgspec.json.decode(msg.data))

    await nc.jetstream().subscribe("fleet.v1.evt.>", cb=on_event, deliver_policy=DeliverPolicy.NEW)
    grace_s = 3.0
    grace_ends_after = datetime.now(UTC) + timedelta(seconds=grace_s)  # the replica starts its grace after this
    async with replica(nats_server.url, state, startup_grace_s=grace_s):  # the fleet is silent while we restart
        data = await request(nc, "health.summary")
        assert data["nodes"]["ready"] == 4, "health comes back from the checkpoint"
        await eventually(
            lambda: len([e for e in events if e.get("to") == "Unreachable" and "node_id" in e]) == 4,
            "4 nodes Unreachable after the grace",
            timeout_s=30,
        )
    await nc.close()
    # Judged by when each event happened, not by when the test looked: a slow start cannot hide or fake one.
    early = [e for e in events if datetime.fromisoformat(e["occurred_at"]) < grace_ends_after]
    assert early == [], "nothing is declared down (or re-announced) during the grace"


def _checkpointed_ready(state: Path) -> int:
    """Ready nodes in the replica's last checkpoint (its SQLite file, read-only)."""
    with contextlib.closing(sqlite3.connect(f"file:{state / 'heartbeat.db'}?mode=ro", uri=True, timeout=10)) as db:
        return int(db.execute("SELECT count(*) FROM hb_nodes WHERE state = 'Ready'").fetchone()[0])


async def _ready_count(nc: Client, count: int) -> bool:
    data = await request(nc, "health.summary")
    return bool(data["nodes"]["ready"] == count)


async def test_a_clusters_batches_land_in_the_partition_of_its_single_heartbeats(mapped_server: NatsServer) -> None:
    """The server's two mappings hash the same cluster token alike, so one replica owns both forms of a cluster."""
    nc = await logins.connect(mapped_server.url)
    landed: dict[str, set[tuple[str, int]]] = {}

    async def on_message(msg: Any) -> None:
        tokens = msg.subject.split(".")
        landed.setdefault(tokens[4], set()).add(("batch" if len(tokens) == 5 else "single", int(tokens[3])))

    await nc.subscribe(f"{subjects.HB_PARTITION_PREFIX}.>", cb=on_message)
    await nc.flush()
    clusters = cluster_ids(20, "pm")
    for cluster in clusters:
        await nc.publish(subjects.heartbeat(cluster, "n1"), b"{}")
        await nc.publish(subjects.heartbeat_batch(cluster), b"{}")
    await eventually(lambda: sum(len(v) for v in landed.values()) == 40, "every message mapped", timeout_s=10)
    assert landed == {
        c: {("single", subjects.partition_of(c, 2)), ("batch", subjects.partition_of(c, 2))} for c in clusters
    }
    assert {p for c in clusters for _, p in landed[c]} == {0, 1}
    await nc.close()


@pytest.mark.parametrize("count", [1, 2])
async def test_batched_heartbeats_make_their_nodes_ready_and_a_silent_one_unreachable(
    tmp_path: Path, count: int
) -> None:
    """HeartbeatBatch end to end: with one partition (no mapping) and with two (mapped, one replica each)."""
    extra = mapping_config(2) if count == 2 else ""
    server = NatsServer(state_dir=tmp_path / "nats", port=free_port(), extra_config=extra)
    server.start()
    nc = await logins.connect(server.url)
    try:
        await ensure_streams(nc.jetstream())
        clusters = cluster_ids(4, "bt")
        for cluster in clusters:
            await publish_event(nc, cluster_event(ClusterApproved, cluster, ClusterState.APPROVED), cluster_id=cluster)
        owned = ["0"] if count == 1 else ["0", "1"]
        async with contextlib.AsyncExitStack() as replicas:
            for p in owned:
                await replicas.enter_async_context(
                    replica(server.url, tmp_path / f"r{p}", partition_count=count, partitions=p)
                )
            gen = LoadGenerator(nc, clusters, 5, interval_s=0.5, slices=5, batch=3)
            load = asyncio.create_task(gen.run())

            async def nodes() -> dict[str, int]:
                return dict((await request(nc, "health.summary"))["nodes"])

            await eventually(nodes, "20 nodes Ready", timeout_s=15, until=lambda n: n["ready"] == 20)
            gen.stop_node(clusters[0], "n0001")
            await eventually(nodes, "the silent node Unreachable", timeout_s=15, until=lambda n: n["unreachable"] == 1)
            assert (await nodes())["ready"] == 19
            gen.stop()
            await load
    finally:
        await nc.close()
        server.stop()
