"""A member that floods the hub: memory, disk and FLEET_EVENTS stay bounded and real clusters stay Ready.

On `flotilla up` (nats-server with the auth callout, registration, heartbeat, each its own process), cluster
`flood-a` joins with a join token, reports its three nodes and heartbeats them; a simulated cluster (`flotilla
sim`) is the bystander. Then heartbeats for 100,000 invented node names of A, pipelined (over the shared
node-agent login, which may publish any heartbeat: A's own logins may not invent nodes at all), and 20,000
publishes the server denies to A's credential. What must hold: no node of either cluster becomes Unreachable,
heartbeat tracks no invented node (at most the quota), heartbeat.db, FLEET_EVENTS and the heartbeat process's
memory grow by small bounded amounts. The counts are printed. A second test floods one member connection with
100,000 subscriptions: the server refuses every one past its per-connection bound
(permissions.MAX_SUBSCRIPTIONS_PER_CONNECTION; the callout JWT's own `subs` limit is ignored by nats-server in
configuration mode).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import nats
import nats.errors
import pytest
from integration_support import connect_watched, send_join

from flotilla_client import busauth, runfile
from flotilla_client.client import FlotillaClient
from flotilla_client.loadgen import template
from flotilla_client.natsserver import free_port
from flotilla_contracts import catalogue, permissions, subjects
from flotilla_contracts.envelope import H_SCHEMA, schema_id
from flotilla_contracts.streams import FLEET_EVENTS
from flotilla_contracts.subjects import Service
from flotilla_contracts.v1.agent import NodeFacts
from flotilla_contracts.v1.common import NodeRole
from flotilla_contracts.v1.heartbeat import Heartbeat, NodeHealth, NodesHealthReply, NodesHealthRequest
from flotilla_contracts.v1.registration import (
    ClusterIdentity,
    JoinReply,
    JoinRequest,
    ReportNodesReply,
    ReportNodesRequest,
)
from flotilla_runtime import codec
from flotilla_runtime.bus import with_user
from flotilla_testkit import eventually

pytestmark = pytest.mark.integration
FLOTILLA = str(Path(sys.executable).parent / "flotilla")
INTERVAL_S = 0.5
FAST = {
    "FLOTILLA_HEARTBEAT_INTERVAL_S": str(INTERVAL_S),
    "FLOTILLA_HEARTBEAT_MISSED_INTERVALS": "4",
    "FLOTILLA_HEARTBEAT_STARTUP_GRACE_S": "1",
    "FLOTILLA_HEARTBEAT_FLAP_WINDOW_S": "2",
    "FLOTILLA_HEARTBEAT_CHECKPOINT_INTERVAL_S": "1",
}
QUOTA = 5000  # FLOTILLA_HEARTBEAT_MAX_NODES_PER_CLUSTER's default
INVENTED, DENIED = 100_000, 20_000
SUBSCRIPTIONS = permissions.MAX_SUBSCRIPTIONS_PER_CONNECTION + 1_000  # past the server's bound
A_NODES = ("n0", "n1", "n2")
_hb_headers = {H_SCHEMA: schema_id(Heartbeat)}


def flotilla(state: Path, *args: str) -> str:
    done = subprocess.run(
        [FLOTILLA, "--state-dir", str(state), *args], capture_output=True, text=True, timeout=120,
        env={**os.environ, **FAST},
    )  # fmt: skip
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    state = tmp_path_factory.mktemp("flood") / ".flotilla"
    flotilla(state, "up", "--port", str(free_port()), "--monitor-port", "0")
    try:
        yield state
    finally:
        subprocess.run([FLOTILLA, "--state-dir", str(state), "down"], capture_output=True, timeout=60)


class Hub:
    """What the test reads of the hub: heartbeat's metrics, file and memory; FLEET_EVENTS; node health."""

    def __init__(self, state: Path) -> None:
        info = runfile.load(state)
        assert info is not None
        [entry] = [s for s in info.services if s.name == Service.HEARTBEAT.value]
        self.heartbeat_dir, self.metrics_url = Path(entry.state_dir), f"http://127.0.0.1:{entry.http_port}/metrics"
        self.heartbeat_pid = entry.pid
        self.server_log = Path(info.nats.log)

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as response:
            text = response.read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))

    def db_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.heartbeat_dir.glob("*.db*"))

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.heartbeat_pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))


async def fleet_event_count(admin: FlotillaClient) -> int:
    info = await admin.nc.jetstream().stream_info(FLEET_EVENTS.name)
    return int(info.state.messages)


async def node_states(admin: FlotillaClient) -> dict[str, NodeHealth]:
    found: dict[str, NodeHealth] = {}
    cursor = ""
    while True:
        page = await admin.request(
            Service.HEARTBEAT, "health.nodes", NodesHealthRequest(limit=500, cursor=cursor), NodesHealthReply
        )
        found |= {f"{n.cluster_id}/{n.node_id}": n.state for n in page.nodes}
        if not page.next_cursor:
            return found
        cursor = page.next_cursor


def heartbeat_body(cluster: str, node: str, seq: int) -> bytes:
    head, middle, tail = template(cluster, node)
    return b"".join((head, str(seq).encode(), middle, datetime.now(UTC).isoformat().encode(), tail))


async def join_a(url: str, token: str, name: str = "flood-a") -> JoinReply:
    nc = (await connect_watched(with_user(url, permissions.join_user(uuid.uuid4().hex), token))).nc
    try:
        request = JoinRequest(
            request_id=f"join-{name}", token=token,
            identity=ClusterIdentity(uid=f"uid-{name}", name=name, kubernetes_version="v1.30.4"),
        )  # fmt: skip
        return await send_join(nc, request)
    finally:
        await nc.close()


async def test_a_member_flood_stays_bounded_and_real_clusters_stay_ready(state: Path) -> None:
    token = flotilla(state, "token", "create", "--auto-approve", "--max-uses", "10").strip()
    flotilla(state, "sim", "--clusters", "1", "--nodes", "3", "--token", token, "--prefix", "bystander")
    admin_url = runfile.server_url(state)
    info = runfile.load(state)
    assert admin_url and info is not None
    url = f"nats://127.0.0.1:{info.nats.port}"
    hub = Hub(state)
    joined = await join_a(url, token)
    a_id, credential = joined.cluster_id, joined.credential
    assert credential
    a = await connect_watched(with_user(url, permissions.cluster_user(a_id), credential))
    # Heartbeats travel over a login that may publish any node's heartbeat: the node-agent service user that the
    # packed simulator shares. A member's own logins may publish only their node's heartbeats (per-node identity),
    # so this is the strongest heartbeat flood there is: the bus no longer vouches for the node, only heartbeat's
    # quota stands between it and the hub's memory, disk and event stream.
    any_node = await connect_watched(busauth.service_url(url, busauth.load(state), Service.NODE_AGENT))
    beating = True

    async def heartbeats() -> None:  # A's real nodes, every interval, throughout
        seq = 0
        while beating:
            for node in A_NODES:
                body = heartbeat_body(a_id, node, seq)
                await any_node.nc.publish(subjects.heartbeat(a_id, node), body, headers=_hb_headers)
            seq += 1
            await asyncio.sleep(INTERVAL_S)  # sleep: a real node's heartbeat pace

    async with FlotillaClient(admin_url) as admin:
        facts = [NodeFacts(node_id=n, node_name=n, role=NodeRole.WORKER, kubelet_version="v1.30.4") for n in A_NODES]
        report = ReportNodesRequest(
            cluster_id=a_id, credential=credential, nodes=facts, complete=True, reported_at=datetime.now(UTC)
        )
        raw = await a.nc.request(
            catalogue.subject_for(ReportNodesRequest), codec.encode(report), timeout=10,
            headers={H_SCHEMA: schema_id(ReportNodesRequest)},
        )  # fmt: skip
        assert codec.decode_reply(raw.data, ReportNodesReply).ok
        beat = asyncio.create_task(heartbeats())

        seen: dict[str, NodeHealth] = {}

        async def six_ready() -> bool:
            seen.clear()
            seen.update(await node_states(admin))
            return len(seen) == 6 and set(seen.values()) == {NodeHealth.READY}

        try:
            await eventually(six_ready, "A's 3 nodes and the bystander's 3 Ready", timeout_s=60, every_s=0.2)
        except AssertionError:
            raise AssertionError(f"nodes: {seen}; A's connection errors: {a.errors[:3]}") from None
        before = {
            "tracked": hub.metric("flotilla_heartbeat_tracked_nodes"),
            "received": hub.metric("flotilla_heartbeats_received_total"),
            "db": hub.db_bytes(),
            "events": await fleet_event_count(admin),
            "rss_kib": hub.rss_kib(),
            "server_log": hub.server_log.stat().st_size,
        }

        # 1. Heartbeats for 100,000 invented nodes of A, pipelined.
        flood = await connect_watched(with_user(url, permissions.cluster_user(a_id), credential))
        started = time.monotonic()
        for i in range(INVENTED):
            node = f"x{i:06d}"
            body = heartbeat_body(a_id, node, 1)
            await any_node.nc.publish(subjects.heartbeat(a_id, node), body, headers=_hb_headers)
        await any_node.nc.flush(timeout=60)
        sent_s = time.monotonic() - started

        async def all_received() -> bool:
            return hub.metric("flotilla_heartbeats_received_total") - before["received"] >= INVENTED

        await eventually(all_received, "heartbeat received the flood", timeout_s=60, every_s=0.2)

        # 3. Publishes the server denies to A's credential (another cluster's heartbeats).
        for i in range(DENIED):
            await flood.nc.publish(subjects.heartbeat("flood-b", f"n{i}"), b"{}")
        await flood.nc.flush(timeout=60)

        # Bounded, over a few checkpoints and intervals: nothing grows, nobody becomes Unreachable.
        deadline = time.monotonic() + 4.0
        worst: dict[str, NodeHealth] = {}
        while time.monotonic() < deadline:
            states = await node_states(admin)
            worst |= {k: v for k, v in states.items() if v is not NodeHealth.READY}
            await asyncio.sleep(0.5)  # sleep: proves a negative (no node leaves Ready for 4 s), sampled
        after = {
            "tracked": hub.metric("flotilla_heartbeat_tracked_nodes"),
            "refused": hub.metric("flotilla_member_refused_total"),
            "db": hub.db_bytes(),
            "events": await fleet_event_count(admin),
            "rss_kib": hub.rss_kib(),
            "server_log": hub.server_log.stat().st_size,
        }
        beating = False
        await beat
        for connection in (a, any_node, flood):
            if not connection.nc.is_closed:
                await connection.nc.close()

    print(
        f"\nmember flood: {INVENTED:,} invented-node heartbeats sent in {sent_s:.1f}s; heartbeat refused "
        f"{after['refused']:,.0f}; tracked nodes {before['tracked']:.0f} -> {after['tracked']:.0f} "
        f"(quota {QUOTA}); heartbeat.db {before['db']:,} -> {after['db']:,} bytes; FLEET_EVENTS "
        f"{before['events']} -> {after['events']}; heartbeat RSS {before['rss_kib'] // 1024} -> "
        f"{after['rss_kib'] // 1024} MiB; {DENIED:,} denied "
        f"publishes grew the server log by {after['server_log'] - before['server_log']:,} bytes; "
        f"not Ready meanwhile: {worst or 'none'}"
    )
    assert not worst, f"real nodes left Ready during the flood: {worst}"
    assert after["tracked"] == before["tracked"] <= QUOTA
    assert after["refused"] >= INVENTED
    assert after["db"] - before["db"] < 1024 * 1024
    assert after["events"] - before["events"] < 100
    assert after["rss_kib"] - before["rss_kib"] < 64 * 1024


async def test_the_server_cuts_a_subscription_flood_at_the_member_limit(state: Path) -> None:
    token = flotilla(state, "token", "create", "--auto-approve", "--max-uses", "1").strip()
    info = runfile.load(state)
    admin_url = runfile.server_url(state)
    assert info is not None and admin_url
    url = f"nats://127.0.0.1:{info.nats.port}"
    joined = await join_a(url, token, "flood-subs")
    assert joined.credential
    user = permissions.cluster_user(joined.cluster_id)
    subs = await connect_watched(with_user(url, user, joined.credential))
    made = 0
    try:
        for i in range(SUBSCRIPTIONS):
            await subs.nc.subscribe(f"{permissions.inbox_prefix(user)}.flood.{i}")
            made += 1
        await subs.nc.flush(timeout=30)  # the server has read every SUB: past the bound it answers -ERR and closes
    except (nats.errors.Error, TimeoutError):
        pass  # the server closed the connection at the bound while we were still sending

    async def cut() -> bool:
        return subs.nc.is_closed or any("maximum subscriptions exceeded" in e.lower() for e in subs.errors)

    with contextlib.suppress(AssertionError):  # judged below, after the figures are printed
        await eventually(cut, "the server to cut the connection past its subscription bound", timeout_s=30, every_s=0.2)
    was_cut = await cut()
    print(f"\nsubscription flood: {made:,} sent (server bound {permissions.MAX_SUBSCRIPTIONS_PER_CONNECTION}); "
          f"errors: {subs.errors[:1]}, closed: {subs.nc.is_closed}")  # fmt: skip
    if not subs.nc.is_closed:
        await subs.nc.close()
    assert was_cut, "the server let one member connection hold every subscription it asked for"
