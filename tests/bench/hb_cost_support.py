"""The heartbeat cost benchmark's processes: CPU and memory from /proc, children that report counts, etcd.

Every party of the cost benchmark runs as its own process so that /proc can say what each one costs: the
nats-server, a bare nats-py subscriber, the heartbeat service (`python -m flotilla_heartbeat`), the load
generators (`python -m flotilla_client.loadgen`), etcd and its lease renewer (etcd_leases.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flotilla_client.natsserver import free_port

TICKS = os.sysconf("SC_CLK_TCK")
STARTED: list[asyncio.subprocess.Process] = []  # every child, so that a failing run leaves none behind
PAGE = os.sysconf("SC_PAGE_SIZE")
ETCD = Path(__file__).resolve().parents[2] / ".tools" / "k8s" / "bin" / "etcd"

# A bare nats-py subscriber: counts, and samples one message in 64 for its latency (sent_at in the body).
RAW_SUBSCRIBER = """
import asyncio, json, signal, sys, time, datetime, nats
async def main():
    nc = await nats.connect(sys.argv[1], pending_size=64 * 1024 * 1024)
    n = 0
    lat = []
    async def cb(msg):
        nonlocal n
        n += 1
        if n & 63 == 0:
            data = msg.data
            at = data.find(b'"sent_at":"') + 11
            sent = datetime.datetime.fromisoformat(data[at : data.find(b'"', at)].decode()).timestamp()
            lat.append(time.time() - sent)
    await nc.subscribe(sys.argv[2], cb=cb, pending_msgs_limit=2_000_000, pending_bytes_limit=2 << 30)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(json.dumps({"ready": True, "n": 0}), flush=True)
    while not stop.is_set():
        print(json.dumps({"n": n}), flush=True)
        try:
            await asyncio.wait_for(stop.wait(), 0.25)
        except TimeoutError:
            pass
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")
    print(json.dumps({"result": {"n": n, "p50_ms": q(0.5), "p99_ms": q(0.99)}}), flush=True)
    await nc.close()
asyncio.run(main())
"""


async def kill_started() -> None:
    """Kill every child still running (after a failure) and wait for it."""
    for proc in STARTED:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    STARTED.clear()


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


@dataclass
class Child:
    """A child process printing JSON lines: `{"n": count}` as it goes, `{"result": {...}}` when it ends."""

    proc: asyncio.subprocess.Process
    n: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    result: dict[str, Any] = field(default_factory=dict)
    _reader: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, *args: str, env: dict[str, str] | None = None) -> Child:
        proc = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.PIPE, env={**os.environ, **(env or {})}, limit=1 << 22
        )
        STARTED.append(proc)
        child = cls(proc)
        child._reader = asyncio.create_task(child._read())
        return child

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            try:
                found = json.loads(line)
            except ValueError:
                continue
            if found.get("ready"):
                self.ready.set()
            if "result" in found:
                self.result = found["result"]
            elif "n" in found:
                self.n = found["n"]
            else:
                self.result = found  # the load generator prints its result as one object

    async def stop(self, timeout_s: float = 30.0) -> dict[str, Any]:
        """SIGTERM, wait for the last line; returns the result."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout_s)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            await self._reader
        return self.result


async def raw_subscriber(url: str, subject: str) -> Child:
    child = await Child.start(sys.executable, "-c", RAW_SUBSCRIBER, url, subject)
    await asyncio.wait_for(child.ready.wait(), 30)
    return child


async def loadgens(
    url: str,
    procs: int,
    clusters: int,
    nodes: int,
    interval_s: float,
    *extra: str,
    prefix: str = "bench",
    first: list[str] | None = None,
) -> list[Child]:
    """`procs` load generator processes splitting `clusters` between them (run until stopped); the first one
    also gets `first` (say, nodes to stop)."""
    share = -(-clusters // procs)
    children = []
    for i in range(procs):
        count = min(share, clusters - i * share)
        args = ["--server", url, "--clusters", str(count), "--offset", str(i * share), "--nodes", str(nodes)]
        args += ["--interval", str(interval_s), "--prefix", prefix, "--seed", str(7 + i), *extra]
        args += (first or []) if i == 0 else []
        children.append(await Child.start(sys.executable, "-m", "flotilla_client.loadgen", *args))
    return children


async def stop_all(children: list[Child]) -> list[dict[str, Any]]:
    return list(await asyncio.gather(*(child.stop() for child in children)))


def metrics(port: int) -> dict[str, float]:
    """The service's /metrics, unlabelled samples only (name -> value)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
        text = answer.read().decode()
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, _, value = line.partition(" ")
            found[name] = float(value.split()[0])
    return found


async def metric(port: int, name: str) -> float:
    return (await asyncio.to_thread(metrics, port)).get(name, 0.0)


@dataclass
class Served:
    """A process this benchmark started, and the port it serves on; stopped with SIGTERM (killed after 30 s)."""

    proc: asyncio.subprocess.Process
    port: int

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


@dataclass
class Service(Served):
    """The heartbeat service as its own process (`python -m flotilla_heartbeat`), with its /metrics port."""

    @classmethod
    async def start(cls, url: str, state: Path, interval_s: float, **settings: str) -> Service:
        port = free_port()
        env = {
            "FLOTILLA_HEARTBEAT_NATS_URL": url,
            "FLOTILLA_HEARTBEAT_STATE_DIR": str(state),
            "FLOTILLA_HEARTBEAT_HTTP_PORT": str(port),
            "FLOTILLA_HEARTBEAT_INTERVAL_S": str(interval_s),
            "FLOTILLA_HEARTBEAT_LOST_AFTER_S": "600",
            "FLOTILLA_HEARTBEAT_STARTUP_GRACE_S": "0",
            "FLOTILLA_HEARTBEAT_FLAP_WINDOW_S": str(3 * interval_s),
            "FLOTILLA_HEARTBEAT_LOG_LEVEL": "WARNING",
            "FLOTILLA_HEARTBEAT_TRACE_SAMPLE_RATIO": "0",
            **{f"FLOTILLA_HEARTBEAT_{key.upper()}": value for key, value in settings.items()},
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "flotilla_heartbeat",
            env={**os.environ, **env},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=state.with_suffix(".log").open("ab"),
        )
        STARTED.append(proc)
        return cls(proc, port)


@dataclass
class Etcd(Served):
    @classmethod
    async def start(cls, data: Path) -> Etcd:
        if not ETCD.exists():
            raise FileNotFoundError(f"{ETCD} is missing: run `make k8s-bins` first")
        port, peer = free_port(), free_port()
        client, peer_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{peer}"
        args = ["--data-dir", str(data), "--listen-client-urls", client, "--advertise-client-urls", client]
        args += ["--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url]
        args += ["--initial-cluster", f"default={peer_url}", "--log-level", "error"]
        proc = await asyncio.create_subprocess_exec(str(ETCD), *args, stderr=asyncio.subprocess.DEVNULL)
        STARTED.append(proc)
        return cls(proc, port)


def etcd_renewer(port: int, leases: int, interval_s: float, *extra: str) -> list[str]:
    script = str(Path(__file__).with_name("etcd_leases.py"))
    return [sys.executable, script, "--port", str(port), "--leases", str(leases), "--interval", str(interval_s), *extra]


@dataclass
class Window:
    """CPU seconds of some processes and a count, between `open` and `close`: the cost per counted item."""

    pids: dict[str, int]
    started: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    count: float = 0.0
    figures: dict[str, float] = field(default_factory=dict)

    def open(self, count: float) -> None:
        self.started, self.count = time.monotonic(), count
        self.cpu = {name: cpu_s(pid) for name, pid in self.pids.items()}

    def close(self, count: float) -> dict[str, float]:
        elapsed = time.monotonic() - self.started
        done = max(count - self.count, 1.0)
        self.figures = {"rate": done / elapsed, "count": done, "elapsed": elapsed}
        for name, pid in self.pids.items():
            self.figures[f"{name}_us"] = (cpu_s(pid) - self.cpu[name]) / done * 1e6
        self.figures["server_us"] = sum(self.figures[f"{name}_us"] for name in self.pids)
        return self.figures
