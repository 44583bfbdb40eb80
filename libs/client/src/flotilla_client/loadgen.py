"""Simulated senders: heartbeats for N clusters x M nodes at an interval, from one process.

Each node's heartbeat is pre-encoded once as a template; a round only splices in the sequence number and
the send time, so one process can publish well over 100k heartbeats/s. Rounds are spread evenly over the
interval. With `batch`, a cluster's nodes go out `batch` at a time as HeartbeatBatch messages on
`fleet.v1.hb.<cluster>` (as a packed sim or a cluster-level relay sends them). Nodes can be stopped,
resumed or made NotReady while running, and a share of garbage can be mixed in (for the bad-input tests and
the benchmark).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import random
import signal
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import msgspec
from nats.aio.client import Client

from flotilla_contracts import subjects
from flotilla_contracts.envelope import H_SCHEMA, schema_id
from flotilla_contracts.v1.common import ConditionStatus, NodeCondition, NodeConditionType, Resources
from flotilla_contracts.v1.heartbeat import Heartbeat, HeartbeatBatch

_SEQ = 987654321987  # placeholders, found in the encoded template and replaced each round
_TS = datetime(2000, 1, 1, tzinfo=UTC)
_TS_TEXT = b"2000-01-01T00:00:00Z"
_SEQ_TEXT = str(_SEQ).encode()
HEADERS = {H_SCHEMA: schema_id(Heartbeat)}
BATCH_HEADERS = {H_SCHEMA: schema_id(HeartbeatBatch)}
GARBAGE_KINDS = ("malformed", "wrong_field", "bad_id", "subject_mismatch", "wrong_schema")


def cluster_ids(count: int, prefix: str = "lg") -> list[str]:
    return [f"{prefix}-c{i:05d}" for i in range(count)]


def node_ids(count: int) -> list[str]:
    return [f"n{i:04d}" for i in range(count)]


def conditions(ready: bool) -> list[NodeCondition]:
    since = datetime(2024, 1, 1, tzinfo=UTC)
    found = [
        NodeCondition(
            type=NodeConditionType.READY,
            status=ConditionStatus.TRUE if ready else ConditionStatus.FALSE,
            reason="KubeletReady" if ready else "KubeletNotReady",
            last_transition_at=since,
        )
    ]
    for kind in (NodeConditionType.MEMORY_PRESSURE, NodeConditionType.DISK_PRESSURE, NodeConditionType.PID_PRESSURE):
        found.append(NodeCondition(type=kind, status=ConditionStatus.FALSE, reason="Ok", last_transition_at=since))
    return found


def template(cluster: str, node: str, ready: bool = True, kubelet: str = "v1.30.4") -> tuple[bytes, bytes, bytes]:
    """A node's heartbeat split around its two changing fields: (head, middle, tail)."""
    body = msgspec.json.encode(
        Heartbeat(
            cluster_id=cluster,
            node_id=node,
            node_name=node,
            seq=_SEQ,
            sent_at=_TS,
            kubelet_version=kubelet,
            kube_proxy_version=kubelet,
            conditions=conditions(ready),
            capacity=Resources(cpu_millis=4000, memory_bytes=16 << 30, pods=110),
            allocatable=Resources(cpu_millis=3800, memory_bytes=15 << 30, pods=110),
            agent_version="loadgen",
        )
    )
    head, rest = body.split(str(_SEQ).encode(), 1)
    middle, tail = rest.split(_TS_TEXT, 1)
    return head, middle, tail


def batch_frame(cluster: str) -> tuple[bytes, bytes]:
    """A HeartbeatBatch's encoding around its entries: (before, after); entries go between, comma-separated."""
    before, after = msgspec.json.encode(HeartbeatBatch(cluster_id=cluster, beats=[])).split(b"[]", 1)
    return before + b"[", b"]" + after


@dataclass
class LoadStats:
    sent: int = 0
    garbage: int = 0
    rounds: int = 0
    late_s: float = 0.0  # how far the slowest round ended past its deadline


@dataclass
class LoadGenerator:
    """Publishes for every (cluster, node) once per interval until `stop()` or the duration ends."""

    nc: Client
    clusters: list[str]
    nodes_per_cluster: int
    interval_s: float = 10.0
    garbage_ratio: float = 0.0
    headers: bool = True
    slices: int = 50  # publishing is spread over this many slices of each interval
    seed: int = 0
    batch: int = 0  # >0: send a cluster's heartbeats this many to a HeartbeatBatch
    stats: LoadStats = field(default_factory=LoadStats)
    stopped: dict[tuple[str, str], float] = field(default_factory=dict)  # node -> wall time it stopped
    _templates: dict[tuple[str, str], tuple[bytes, bytes, bytes]] = field(default_factory=dict)
    _subjects: dict[tuple[str, str], str] = field(default_factory=dict)
    _running: bool = True

    def __post_init__(self) -> None:
        for cluster in self.clusters:
            for node in node_ids(self.nodes_per_cluster):
                self._templates[cluster, node] = template(cluster, node)
                self._subjects[cluster, node] = subjects.heartbeat(cluster, node)
        self._rng = random.Random(self.seed)
        self._frames = {cluster: batch_frame(cluster) for cluster in self.clusters} if self.batch else {}
        self._bodies: dict[tuple[str, str], bytes] = {}  # a unit's whole batch by its first node (see `_whole`)

    @property
    def keys(self) -> list[tuple[str, str]]:
        return list(self._templates)

    def stop_node(self, cluster: str, node: str) -> float:
        """The node stops sending; returns the wall time it stopped."""
        at = time.time()
        self.stopped[cluster, node] = at
        return at

    def resume_node(self, cluster: str, node: str) -> None:
        self.stopped.pop((cluster, node), None)

    def set_ready(self, cluster: str, node: str, ready: bool) -> None:
        self._templates[cluster, node] = template(cluster, node, ready)
        self._bodies.clear()

    def stop(self) -> None:
        self._running = False

    def running(self) -> bool:
        return self._running

    def units(self) -> list[list[tuple[str, str]]]:
        """What one message carries: one node, or up to `batch` nodes of one cluster."""
        if not self.batch:
            return [[key] for key in self._templates]
        found: list[list[tuple[str, str]]] = []
        for cluster in self.clusters:
            nodes = [(cluster, node) for node in node_ids(self.nodes_per_cluster)]
            found += [nodes[i : i + self.batch] for i in range(0, len(nodes), self.batch)]
        return found

    async def run(self, duration_s: float | None = None, rounds: int | None = None) -> LoadStats:
        start = time.monotonic()
        keys = self.units()
        per_slice = max(1, -(-len(keys) // self.slices))
        seq = 0
        while self._running:
            seq += 1
            round_start = start + (seq - 1) * self.interval_s
            for index in range(0, len(keys), per_slice):
                await self._publish(keys[index : index + per_slice], seq)
                slice_end = round_start + (index // per_slice + 1) * self.interval_s / self.slices
                delay = slice_end - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if not self.running():
                    break
            self.stats.rounds += 1
            self.stats.late_s = max(self.stats.late_s, time.monotonic() - (round_start + self.interval_s))
            if (rounds is not None and seq >= rounds) or (
                duration_s is not None and time.monotonic() - start >= duration_s
            ):
                break
        await self.nc.flush()
        return self.stats

    async def _publish(self, units: list[list[tuple[str, str]]], seq: int) -> None:
        sent_at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z").encode()
        seq_text = str(seq).encode()
        if self.batch:
            await self._publish_batches(units, seq_text, sent_at)
            return
        keys = [unit[0] for unit in units]
        publish = self.nc.publish
        headers = HEADERS if self.headers else None
        stopped = self.stopped
        garbage = self.garbage_ratio
        for key in keys:
            if stopped and key in stopped:
                continue
            if garbage and self._rng.random() < garbage:
                await self._garbage(key)
                continue
            head, middle, tail = self._templates[key]
            await publish(self._subjects[key], b"".join((head, seq_text, middle, sent_at, tail)), headers=headers)
        self.stats.sent += len(keys)

    def _whole(self, unit: list[tuple[str, str]]) -> bytes:
        """A unit's batch with every node in it, encoded once: a round only replaces the two placeholders."""
        key = unit[0][0], unit[0][1]
        body = self._bodies.get(key)
        if body is None:
            before, after = self._frames[unit[0][0]]
            entries = (b"".join((h, _SEQ_TEXT, m, _TS_TEXT, t)) for h, m, t in map(self._templates.__getitem__, unit))
            body = self._bodies[key] = before + b",".join(entries) + after
        return body

    async def _publish_batches(self, units: list[list[tuple[str, str]]], seq_text: bytes, sent_at: bytes) -> None:
        publish, stopped, templates = self.nc.publish, self.stopped, self._templates
        headers = BATCH_HEADERS if self.headers else None
        for unit in units:
            if not stopped or not any(key in stopped for key in unit):  # the usual case: pre-encoded
                body = self._whole(unit).replace(_SEQ_TEXT, seq_text).replace(_TS_TEXT, sent_at)
                await publish(subjects.heartbeat_batch(unit[0][0]), body, headers=headers)
                self.stats.sent += len(unit)
                continue
            entries = []
            for key in unit:
                if stopped and key in stopped:
                    continue
                head, middle, tail = templates[key]
                entries.append(b"".join((head, seq_text, middle, sent_at, tail)))
            if entries:
                before, after = self._frames[unit[0][0]]
                await publish(
                    subjects.heartbeat_batch(unit[0][0]), before + b",".join(entries) + after, headers=headers
                )
            self.stats.sent += len(entries)

    async def _garbage(self, key: tuple[str, str]) -> None:
        kind = self._rng.choice(GARBAGE_KINDS)
        subject = self._subjects[key]
        head, middle, tail = self._templates[key]
        good = b"".join((head, b"1", middle, b"2024-01-01T00:00:00Z", tail))
        self.stats.garbage += 1
        if kind == "malformed":
            await self.nc.publish(subject, good[: len(good) // 2])
        elif kind == "wrong_field":
            await self.nc.publish(subject, good.replace(b'"seq":1', b'"seq":-5'))
        elif kind == "bad_id":
            await self.nc.publish(subject, good.replace(f'"node_id":"{key[1]}"'.encode(), b'"node_id":"a.b*"'))
        elif kind == "subject_mismatch":
            await self.nc.publish(subject, good.replace(f'"node_id":"{key[1]}"'.encode(), b'"node_id":"someone-else"'))
        else:
            await self.nc.publish(subject, good, headers={H_SCHEMA: "registration.JoinRequest/v1"})


def main() -> None:
    """`python -m flotilla_client.loadgen --clusters 100 --nodes 100 --interval 10`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="nats://127.0.0.1:4222")
    parser.add_argument("--clusters", type=int, default=10)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--duration", type=float, default=None)
    parser.add_argument("--prefix", default="lg")
    parser.add_argument("--garbage", type=float, default=0.0)
    parser.add_argument(
        "--offset", type=int, default=0, help="number of the first cluster (several processes split a fleet)"
    )
    parser.add_argument("--stop-random", type=int, default=0, help="stop this many random nodes during the run")
    parser.add_argument(
        "--stop-window", default="", help="'A,B': stop them between A and B seconds (default: the run's 2nd quarter)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=0, help="send heartbeats this many to a HeartbeatBatch")
    parser.add_argument("--no-headers", action="store_true", help="leave out the Flotilla-Schema header")
    args = parser.parse_args()

    async def go() -> None:
        from flotilla_runtime import logins

        nc = await logins.connect(args.server, pending_size=64 * 1024 * 1024)
        gen = LoadGenerator(
            nc,
            cluster_ids(args.clusters + args.offset, args.prefix)[args.offset :],
            args.nodes,
            args.interval,
            args.garbage,
            headers=not args.no_headers,
            seed=args.seed,
            batch=args.batch,
        )
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, gen.stop)  # stop, then print the result
        stoppers = []
        window = tuple(float(v) for v in args.stop_window.split(",")) if args.stop_window else None
        if args.stop_random and (args.duration or window):
            rng = random.Random(args.seed)
            first, last = window or (args.duration / 4, args.duration / 2)
            for cluster, node in rng.sample(gen.keys, args.stop_random):
                at = rng.uniform(first, last)
                stoppers.append(asyncio.get_running_loop().call_later(at, gen.stop_node, cluster, node))
        stats = await gen.run(duration_s=args.duration)
        ended_at = time.time()
        stopped = {f"{c}/{n}": at for (c, n), at in gen.stopped.items()}
        result = {**dataclasses.asdict(stats), "stopped": stopped, "ended_at": ended_at}
        print(msgspec.json.encode(result).decode())  # noqa: T201 - a command-line tool's result
        await nc.close()

    asyncio.run(go())


if __name__ == "__main__":
    main()
