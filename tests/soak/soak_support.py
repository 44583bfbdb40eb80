"""What the soak tests watch on a running local fleet: the server's own record of every connection (expired
grants, kicks), the gaps between each node's heartbeats, health transitions, and the processes' memory."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from chaos_fleet import Event, request
from nats.aio.client import Client
from nats.aio.msg import Msg

from flotilla_client import runfile
from flotilla_contracts.subjects import Service
from flotilla_contracts.v1 import upgrade as up
from flotilla_contracts.v1 import upgrade_status as st
from flotilla_runtime.lifeline import Lifeline
from flotilla_runtime.natsconn import connect_options

ACCOUNT_CONNZ = "$SYS.REQ.ACCOUNT.PING.CONNZ"  # the server's connection list, scoped to the asking account
OPEN, CLOSED = 0, 1  # nats-server's ConnState in a CONNZ request
EXPIRED = "Authentication Expired"
DONE = (st.RolloutState.SUCCEEDED, st.RolloutState.COMPLETED_WITH_FAILURES, st.RolloutState.ABORTED)
UPG = Service.UPGRADE_ORCHESTRATOR


async def admin_connection(url: str, name: str) -> tuple[Client, Lifeline]:
    """An admin connection that rides out nats-server restarts (the soak's own observer)."""
    lifeline = Lifeline(name)
    nc = await nats.connect(url, name=name, **lifeline.options(), **connect_options(url))
    return lifeline.attach(nc), lifeline


async def connections(nc: Client, state: int) -> list[dict[str, Any]]:
    """The FLEET account's open or recently closed connections, as the server records them."""
    query = {"state": state, "auth": True, "limit": 100_000}
    reply = await nc.request(ACCOUNT_CONNZ, json.dumps(query).encode(), timeout=5)
    data = json.loads(reply.data).get("data") or {}
    return list(data.get("connections") or [])


def cluster_of(user: str) -> str:
    """`c.<cluster>[.<node>]` -> cluster; "" for any other user."""
    parts = user.split(".")
    return parts[1] if parts[0] == "c" and len(parts) >= 2 else ""


async def expiries_by_cluster(nc: Client) -> Counter[str]:
    """How many connections of each cluster the server ended because their grant expired."""
    closed = await connections(nc, CLOSED)
    return Counter(cluster_of(c.get("authorized_user", "")) for c in closed if c.get("reason") == EXPIRED) - Counter(
        {"": 10**9}
    )


async def open_clusters(nc: Client) -> set[str]:
    return {cluster_of(c.get("authorized_user", "")) for c in await connections(nc, OPEN)} - {""}


@dataclass
class HeartbeatWatch:
    """Every heartbeat's arrival, per node: the longest silence each node had while watched."""

    last: dict[str, float] = field(default_factory=dict)
    max_gap: dict[str, float] = field(default_factory=dict)
    received: int = 0

    async def on_heartbeat(self, msg: Msg) -> None:
        now = time.monotonic()
        node = msg.subject.removeprefix("fleet.v1.hb.")
        if node in self.last:
            self.max_gap[node] = max(self.max_gap.get(node, 0.0), now - self.last[node])
        self.last[node] = now
        self.received += 1

    def reset(self) -> None:
        """Forget arrival times (after a planned outage, whose silence is not the renewals' doing)."""
        self.last.clear()

    def worst(self) -> tuple[str, float]:
        return max(self.max_gap.items(), key=lambda item: item[1], default=("", 0.0))


def unhealthy_transitions(events: list[Event]) -> list[str]:
    """Every node or cluster health event that left Ready for Unreachable or Lost."""
    return [
        f"{data.get('cluster_id')}/{data.get('node_id', '*')} -> {data['to']} ({data.get('reason')})"
        for _subject, schema, data in events
        if schema.split("/")[0] in ("heartbeat.NodeHealthChanged", "heartbeat.ClusterHealthChanged")
        and data.get("to") in ("Unreachable", "Lost")
    ]


async def roll_out(
    url: str, target: str, *, max_clusters: int, max_unavailable: int, timeout_s: float
) -> st.RolloutStatusReply:
    """Start a rollout and drive it to its end (retrying a freeze, as an operator would); the last status."""
    spec = up.RolloutSpec(
        target_version=target,
        waves=up.WavesSpec(canary_clusters=1, percentages=[100]),
        max_concurrent_clusters=max_clusters,
        max_unavailable=max_unavailable,
    )
    started = await request(
        url, UPG, "upgrade.start", up.StartRolloutRequest(request_id=uuid.uuid4().hex, spec=spec), up.StartRolloutReply
    )
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            status: st.RolloutStatusReply = await request(
                url,
                UPG,
                "upgrade.status",
                st.RolloutStatusRequest(rollout_id=started.rollout_id),
                st.RolloutStatusReply,
            )
        except Exception:  # the orchestrator or the bus restarting: ask again
            status = None  # type: ignore[assignment]
        if status is not None:
            if status.rollout.state in DONE:
                return status
            if status.rollout.state is st.RolloutState.FROZEN:
                await request(
                    url, UPG, "upgrade.retry", up.RetryRequest(rollout_id=started.rollout_id), st.RolloutReply
                )
        assert time.monotonic() < deadline, f"rollout to {target} did not finish: {status and status.rollout}"
        await asyncio.sleep(0.5)  # sleep: the operator's pace between looks (each look may act: retry a freeze)


def rss_mib(pid: int) -> float:
    """Resident memory of a process (MiB), 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def sample_memory(state: Path, peaks: dict[str, float]) -> None:
    """Raise each process's recorded peak resident memory to what it uses now."""
    info = runfile.load(state)
    if info is None:
        return
    pids = {s.name: s.pid for s in info.services} | {f"sim-{s.prefix}": s.pid for s in info.sims}
    if info.nats.pid:
        pids["nats-server"] = info.nats.pid
    for name, pid in pids.items():
        peaks[name] = max(peaks.get(name, 0.0), rss_mib(pid))
