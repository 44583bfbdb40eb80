"""A big simulated fleet on one machine: join, steady heartbeats, queries, and a fleet-wide rollout (issue 21 item 2).

Run: `.venv/bin/pytest -m bench -s tests/bench/bench_big_fleet.py`. Sizes: BENCH_BIG_CLUSTERS (1000),
BENCH_BIG_NODES (10), BENCH_BIG_NODES_PER_SIM (the node budget of one sim process, 10,000: the sims are as many
as the budget needs, each with whole clusters; BENCH_BIG_SIMS overrides the count), BENCH_BIG_CONCURRENT
(clusters upgraded at once, 100), BENCH_BIG_STEADY_S (the steady-heartbeat sample, 20), BENCH_BIG_BATCH (1: the
sims send HeartbeatBatches, `flotilla sim --batch-heartbeats`; 0: one message per node), BENCH_BIG_ROLLOUT (1;
0 skips the fleet-wide rollout, which takes about a second per ten nodes; BENCH_BIG_ROLLOUT_SIMS=k upgrades only
the first k sims' clusters, with the rest of the fleet beside them), BENCH_BIG_RELOGIN (1: restart every
sim at once and time every node and cluster agent logging in again through the auth callout; 0 skips it),
BENCH_BIG_GRANT_TTL_S (agents' bus grant lifetime; by default one that renews about 25 grants a second),
BENCH_BIG_PROGRESS_S (60: the rollout's progress line at most this often). The full
form of the issue is BENCH_BIG_CLUSTERS=10000 (100,000 nodes), with GOMEMLIMIT for the nats-servers and a larger
FLOTILLA_BUS_STORE_GOMEMLIMIT for the first, which stores (both passed to `flotilla up`; docs/scale.md).

Connections (docs/scale.md): every node and every cluster agent holds its own bus connection, so the fleet needs
clusters x (nodes + 1) of them, each an open file in the nats-server that holds it. Past BENCH_BIG_PER_SERVER
(18,000: one server's share of this machine's open-files limit of 20,000) the stack starts several nats-servers
in one NATS cluster (`flotilla up --bus-servers N`; BENCH_BIG_BUS_SERVERS forces N) and the sims are dealt to
them in turn (`flotilla sim --bus-server K`, as many sims as servers at least); the run stops at once, saying
so, when one server's share is over the open-files limit. One client address carries at most the ephemeral port
range (~28,000) to one server's port, so past BENCH_BIG_PER_ADDRESS (25,000) connections on one server the
stack listens on every address (`flotilla up --host 0.0.0.0`) and each sim connects to its own 127.0.0.x
(`flotilla sim --bus-address`); BENCH_BIG_ADDRESSES forces a count.

What it does, each part on the real local stack (`flotilla up`: nats-server, the five services as processes,
`flotilla sim` processes with zero-time steps):
- time to join and approve every cluster (auto-approving token), and to see every node Ready in `health`;
- CPU (% of one core) and resident memory of every process while the fleet only heartbeats;
- `clusters list` (first page), a selector query and `health`, each as a person runs it (the CLI);
- a rollout of the whole fleet, BENCH_BIG_CONCURRENT clusters at a time: node upgrades/s, and the orchestrator's
  turnaround per step measured on the bus: from a node's step report being published to the next command for
  that node being published (p50/p99), against a raw nats-py request/reply round trip in the same run.
It prints figures and the load average; the assertions are about correctness only (everything joined, the
rollout completed, every node at the target).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from bench_support import cpu_seconds, ms, percentile, raw_request_rate, report, rss_mib
from nats.aio.msg import Msg

from flotilla_client import runfile
from flotilla_client.natsserver import ANY_ADDRESS, MAX_CONNECTIONS, STORE_MEMORY_LIMIT_ENV, free_port
from flotilla_client.openfiles import raise_open_files
from flotilla_contracts import subjects
from flotilla_runtime import logins
from flotilla_testkit import eventually

pytestmark = pytest.mark.bench

CLUSTERS = int(os.environ.get("BENCH_BIG_CLUSTERS", "1000"))
NODES = int(os.environ.get("BENCH_BIG_NODES", "10"))
# How often the rollout's end is asked for: each `upgrade status` is a CLI start, about 0.6 s of CPU, which asked
# every second took a third of a core from the 2-core machine at 10,000 x 10 (the end is then seen up to 5 s late).
POLL_S = 1.0 if CLUSTERS * NODES <= 10_000 else 5.0
NODES_PER_SIM = int(os.environ.get("BENCH_BIG_NODES_PER_SIM", "10000"))
CONNECTIONS = CLUSTERS * (NODES + 1)  # every node and every cluster agent has its own connection
PER_SERVER = int(os.environ.get("BENCH_BIG_PER_SERVER", "18000"))
BUS_SERVERS = int(os.environ.get("BENCH_BIG_BUS_SERVERS", str(-(-CONNECTIONS // PER_SERVER))))
_SIMS = max(-(-CLUSTERS * NODES // NODES_PER_SIM), BUS_SERVERS)
SIMS = int(os.environ.get("BENCH_BIG_SIMS", str(-(-_SIMS // BUS_SERVERS) * BUS_SERVERS)))  # as many on each server
SERVER_CONNECTIONS = -(-CONNECTIONS // BUS_SERVERS)  # one server's share
PER_ADDRESS = int(os.environ.get("BENCH_BIG_PER_ADDRESS", "25000"))
ADDRESSES = min(SIMS, int(os.environ.get("BENCH_BIG_ADDRESSES", str(-(-SERVER_CONNECTIONS // PER_ADDRESS)))))
ROLLOUT = os.environ.get("BENCH_BIG_ROLLOUT", "1") == "1"
ROLLOUT_SIMS = int(os.environ.get("BENCH_BIG_ROLLOUT_SIMS", "0"))  # 0: the whole fleet; k: the first k sims' clusters
RELOGIN = os.environ.get("BENCH_BIG_RELOGIN", "1") == "1"
CONCURRENT = int(os.environ.get("BENCH_BIG_CONCURRENT", "100"))
STEADY_S = float(os.environ.get("BENCH_BIG_STEADY_S", "20"))
BATCH = os.environ.get("BENCH_BIG_BATCH", "1") == "1"  # cluster agents relay their nodes' heartbeats as one batch
FLOTILLA = str(Path(sys.executable).parent / "flotilla")
FROM, TO = "v1.29.6", "v1.30.4"
ENDED = ("Succeeded", "CompletedWithFailures", "Aborted", "RolledBack", "Frozen")  # Frozen: it stopped, a failure


# An agent's bus grant lasts this long, then its connection logs in again through the auth callout: the fleet's
# connections / GRANT_TTL_S logins a second for good, on top of everything else (at 110,000 connections and the
# default 600 s, about 190/s: all the callout answered on this 2-core machine, so grants expired faster than they
# were renewed and the fleet shrank). Sized for about 25 renewals a second unless BENCH_BIG_GRANT_TTL_S says.
GRANT_TTL_S = int(os.environ.get("BENCH_BIG_GRANT_TTL_S", str(max(600, CONNECTIONS // 25))))


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOTILLA_") or k == STORE_MEMORY_LIMIT_ENV}
    return env | {"FLOTILLA_REGISTRATION_CALLOUT_GRANT_TTL_S": str(GRANT_TTL_S)}


def cli(state: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    argv = [FLOTILLA, "--state-dir", str(state), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=_env())


def ok(state: Path, *args: str, timeout: float = 600) -> str:
    done = cli(state, *args, timeout=timeout)
    assert done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-2000:])
    return done.stdout


async def run(state: Path, *args: str) -> str:
    """The CLI as a person runs it, without blocking the event loop (the bus subscriptions keep receiving)."""
    proc = await asyncio.create_subprocess_exec(
        FLOTILLA,
        "--state-dir",
        str(state),
        *args,
        env=_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise CliFailed(args, out.decode()[-2000:], err.decode()[-2000:])
    return out.decode()


class CliFailed(AssertionError):
    """A CLI command that exited non-zero: its arguments, the end of its output and of its errors."""


async def timed(state: Path, *args: str) -> float:
    started = time.perf_counter()
    await run(state, *args)
    return time.perf_counter() - started


def processes(state: Path) -> dict[str, int]:
    info = runfile.load(state)
    assert info is not None
    found = {s.name: s.pid for s in info.services}
    found |= {f"sim {s.prefix}": s.pid for s in info.sims}
    found |= {n.name: n.pid for n in runfile.bus_servers(info) if n.pid}
    return found


async def sample(state: Path, seconds: float) -> dict[str, tuple[float, float]]:
    """{process: (% of one core, RSS MiB)} over `seconds`."""
    pids = processes(state)
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    started = time.monotonic()
    await asyncio.sleep(seconds)  # sleep: the sampling window itself, not a wait for a condition
    elapsed = time.monotonic() - started
    return {name: (100 * (cpu_seconds(pid) - before[name]) / elapsed, rss_mib(pid)) for name, pid in pids.items()}


class ConnectionCount:
    """The client connections of every nats-server, read from their /varz once a second: how fast the fleet's
    connections (each authorized by registration's auth callout) arrive."""

    def __init__(self, state: Path) -> None:
        info = runfile.load(state)
        assert info is not None and all(n.monitor_url for n in runfile.bus_servers(info))
        self.urls = [f"{n.monitor_url}/varz" for n in runfile.bus_servers(info)]
        self.samples: list[tuple[float, int]] = []
        self.unanswered = 0  # reads a server did not answer within 5 s

    def each(self) -> list[int]:
        counts = []
        for url in self.urls:
            with urllib.request.urlopen(url, timeout=5) as answer:
                counts.append(int(json.load(answer)["connections"]))
        return counts

    def read(self) -> int | None:
        """The connections of every server, None when one did not answer in time (busy taking a fleet's
        logins: seen when every sim of 10,000 x 10 logged in again at once)."""
        try:
            return sum(self.each())
        except OSError:
            self.unanswered += 1
            return None

    async def follow(self) -> None:
        while True:
            count = await asyncio.to_thread(self.read)
            if count is not None:
                self.samples.append((time.perf_counter(), count))
            await asyncio.sleep(1)  # sleep: the sampling period, not a wait for a condition

    def peak_rate(self) -> float:
        """The most connections added in one sampling period, per second."""
        pairs = zip(self.samples, self.samples[1:], strict=False)
        return max((max(0.0, (b[1] - a[1]) / (b[0] - a[0])) for a, b in pairs), default=0.0)


async def relogin(state: Path) -> str:
    """Restart every sim at once (`flotilla restart sim:<prefix>`): each cluster agent joins again with the
    credential it has (registration says whether it is still approved), then it and its nodes log in, every
    CONNECT through the auth callout: a fleet's agents all restarting, registration's and the callout's rate."""
    count = ConnectionCount(state)
    before = sum(count.each())
    following = asyncio.create_task(count.follow())
    started = time.perf_counter()
    await asyncio.gather(*(run(state, "restart", f"sim:b{i}") for i in range(SIMS)))

    async def back() -> bool:
        return (await asyncio.to_thread(count.read) or 0) >= before

    await eventually(back, "every node and cluster agent connected again", timeout_s=max(300, CONNECTIONS / 20))
    took = time.perf_counter() - started
    following.cancel()
    unanswered = f", {count.unanswered} reads of /varz unanswered in 5 s" if count.unanswered else ""
    return f"{took:.1f} s, {CONNECTIONS / took:.0f} logins/s (peak {count.peak_rate():.0f}/s{unanswered})"


class StepTurnaround:
    """From each node's step report on the bus to the next command for that node (core subscriptions see what
    JetStream stores): the orchestrator's turnaround per step, bus hops included."""

    def __init__(self) -> None:
        self.reported: dict[tuple[str, str], float] = {}
        self.gaps: list[float] = []
        self.commands = 0
        self.reports = 0

    async def on_report(self, msg: Msg) -> None:
        tokens = msg.subject.split(".")  # fleet.v1.evt.node-step.<cluster>.<node>.<event>
        self.reports += 1
        self.reported[(tokens[4], tokens[5])] = time.perf_counter()

    async def on_command(self, msg: Msg) -> None:
        tokens = msg.subject.split(".")  # fleet.v1.agent.<cluster>.<node>.step
        self.commands += 1
        at = self.reported.pop((tokens[3], tokens[4]), None)
        if at is not None:
            self.gaps.append(time.perf_counter() - at)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Path]:
    # a nats-server holds one open file per connection, up to the limit it inherits (raised here where allowed)
    limits = raise_open_files(SERVER_CONNECTIONS + 1000)  # + the services', JetStream's and the log's files
    if not limits.enough:
        pytest.fail(
            f"{CLUSTERS} x {NODES} needs {CONNECTIONS} bus connections, {SERVER_CONNECTIONS} on each of "
            f"{BUS_SERVERS} nats-server(s) (BENCH_BIG_BUS_SERVERS, BENCH_BIG_PER_SERVER): {limits.advice()}"
        )
    state = tmp_path / ".flotilla"
    host = ["--host", ANY_ADDRESS] if ADDRESSES > 1 else []
    max_connections = ["--max-connections", str(max(MAX_CONNECTIONS, CONNECTIONS + 1000))]
    max_connections += ["--bus-servers", str(BUS_SERVERS)]
    monitor = ["--monitor-port", str(free_port())]  # nats-server's /varz: the connection count as the fleet joins
    ok(state, "up", "--port", str(free_port()), *monitor, *host, *max_connections, timeout=180)
    try:
        yield state
    finally:
        cli(state, "down", timeout=180)


@pytest.mark.timeout(4 * 3600)
async def test_a_big_fleet_joins_heartbeats_answers_and_upgrades(fleet: Path) -> None:
    size = f"{CLUSTERS} clusters x {NODES} nodes = {CLUSTERS * NODES} nodes, {SIMS} sims, {CONNECTIONS} connections"
    size += f" on {BUS_SERVERS} nats-servers in one NATS cluster" if BUS_SERVERS > 1 else ""
    size += f" over {ADDRESSES} loopback address(es)" if ADDRESSES > 1 else ""
    figures: dict[str, str] = {"fleet": size + (", batched heartbeats" if BATCH else "")}
    try:
        await measure(fleet, figures)
    except BaseException:  # what was measured before a part failed is printed all the same
        figures["load average"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        report("big fleet (so far)", figures)
        raise
    figures["load average"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    report("big fleet", figures)


async def measure(state: Path, figures: dict[str, str]) -> None:
    """Every part in turn, each adding its figures as it ends."""
    renewals = CONNECTIONS / GRANT_TTL_S
    figures["bus grant lifetime"] = f"{GRANT_TTL_S} s (renewals through the auth callout: {renewals:.0f}/s)"
    url = runfile.server_url(state)
    assert url
    raw_rtt = 1 / await raw_request_rate(url, b"{}", 64, 2000, 1)

    # Join and approval: every sim process at once, each waiting for its own clusters.
    connections = ConnectionCount(state)
    counting = asyncio.create_task(connections.follow())
    started = time.perf_counter()
    sims = []
    for i in range(SIMS):
        count = CLUSTERS // SIMS + (1 if i < CLUSTERS % SIMS else 0)  # whole clusters, as even as they go
        argv = ["sim", "--clusters", str(count), "--nodes", str(NODES), "--versions", FROM, "--prefix", f"b{i}"]
        argv += ["--step-seconds", "0", "--timeout", str(max(300, CLUSTERS))]  # room for a slow machine (120/s seen)
        argv += ["--bus-server", str(1 + i % BUS_SERVERS)]  # sims dealt to the servers in turn
        argv += ["--bus-address", f"127.0.0.{1 + (i // BUS_SERVERS) % ADDRESSES}"] if ADDRESSES > 1 else []
        sims.append(run(state, *argv, *(["--batch-heartbeats"] if BATCH else [])))
    await asyncio.gather(*sims)
    joined = time.perf_counter() - started
    figures["join + approve, all clusters"] = f"{joined:.1f} s ({CLUSTERS / joined:.0f} clusters/s)"

    async def all_ready() -> bool:
        summary = json.loads(await run(state, "health", "-o", "json"))
        nodes = summary.get("nodes", {})
        return int(nodes.get("ready", 0)) >= CLUSTERS * NODES

    await eventually(
        all_ready,
        "every node Ready in `flotilla health`",
        timeout_s=max(300, CLUSTERS * NODES / 40),
        retrying=(AssertionError,),  # a `health` that failed (the bus too busy to take its connection): ask again
    )
    figures["... and every node Ready"] = f"{time.perf_counter() - started:.1f} s"
    counting.cancel()
    each = connections.each()
    figures["bus connections at Ready"] = (
        f"{sum(each)}{f' ({each} per server)' if len(each) > 1 else ''} (peak {connections.peak_rate():.0f} new "
        "connections/s, each through the auth callout)"
    )

    steady = await sample(state, STEADY_S)
    for name, (cpu, rss) in sorted(steady.items()):
        figures[f"steady {name}"] = f"{cpu:5.1f}% CPU, {rss:7.1f} MiB RSS"
    figures["steady total CPU"] = f"{sum(c for c, _ in steady.values()):.0f}% of one core (2 cores = 200%)"

    figures["clusters list (first page)"] = ms(await timed(state, "clusters", "list"))
    figures["clusters list -l (selector)"] = ms(await timed(state, "clusters", "list", "-l", "flotilla.dev/sim=true"))
    figures["health"] = ms(await timed(state, "health"))
    if RELOGIN:
        figures["every sim restarted: all logged in again"] = await relogin(state)
    if not ROLLOUT:
        return

    # The fleet-wide rollout, CONCURRENT clusters at a time, zero-time steps.
    turnaround = StepTurnaround()
    nc = await logins.connect(url)
    await nc.subscribe(f"{subjects.EVT_PREFIX}.node-step.>", cb=turnaround.on_report)
    await nc.subscribe(f"{subjects.AGENT_PREFIX}.*.*.step", cb=turnaround.on_command)
    which: list[str] = []
    upgraded = CLUSTERS * NODES
    if ROLLOUT_SIMS:
        which = ["-l", f"flotilla.dev/sim-fleet in ({','.join(f'b{i}' for i in range(ROLLOUT_SIMS))})"]
        upgraded = sum(CLUSTERS // SIMS + (1 if i < CLUSTERS % SIMS else 0) for i in range(ROLLOUT_SIMS)) * NODES
    started = time.perf_counter()
    out = await run(
        state,
        "upgrade",
        "start",
        *which,
        "--to",
        TO,
        "--canary",
        "0",
        "--waves",
        "100",
        "--max-concurrent-clusters",
        str(CONCURRENT),
        "--max-unavailable",
        "1",
        "--soak",
        "0s",
    )
    rollout = next(t for t in out.split() if t.startswith("r-"))

    unanswered: list[str] = []

    progress = Progress(turnaround, started, float(os.environ.get("BENCH_BIG_PROGRESS_S", "60")))

    async def finished() -> str:
        progress.maybe_say()
        try:
            status = json.loads(await run(state, "upgrade", "status", rollout, "-o", "json"))
        except CliFailed as exc:  # the orchestrator too busy to answer in 10 s: said, and asked again
            unanswered.append(str(exc.args[-1]).strip()[-200:])
            print(f"[big fleet] `upgrade status` unanswered ({len(unanswered)}): {unanswered[-1]}", flush=True)
            return ""
        state_now = status["rollout"]["state"]
        return state_now if state_now in ENDED else ""

    try:
        final = await eventually(
            finished, "the rollout to finish", timeout_s=max(300, CLUSTERS * NODES / 5), every_s=POLL_S
        )
    finally:  # the steps seen so far count even when the rollout does not finish
        figures["`upgrade status` polls unanswered"] = str(len(unanswered))
        figures |= step_figures(turnaround, raw_rtt)
    took = time.perf_counter() - started
    await nc.close()
    assert final == "Succeeded", final
    of = f" of the fleet's {CLUSTERS * NODES}" if upgraded < CLUSTERS * NODES else ""
    figures["rollout"] = (
        f"{upgraded}{of} nodes in {took:.1f} s: {upgraded / took:.0f} node upgrades/s ({CONCURRENT} clusters at once)"
    )


def step_figures(turnaround: StepTurnaround, raw_rtt: float) -> dict[str, str]:
    figures = {"step commands / reports seen": f"{turnaround.commands} / {turnaround.reports}"}
    if turnaround.gaps:
        p50, p99 = percentile(turnaround.gaps, 0.5), percentile(turnaround.gaps, 0.99)
        figures["turnaround per step p50 / p99"] = f"{ms(p50)} / {ms(p99)}"
        figures["... vs raw nats-py request RTT"] = f"{ms(raw_rtt)}: p50 {p50 / raw_rtt:.1f}x, p99 {p99 / raw_rtt:.1f}x"
    return figures


class Progress:
    """A line about once a minute while the rollout runs, said from the status polls (no timer of its own): the
    step reports seen so far and their rate since the last line."""

    def __init__(self, turnaround: StepTurnaround, started: float, every_s: float = 60.0) -> None:
        self.turnaround, self.started, self.every_s = turnaround, started, every_s
        self.said_at, self.said_reports = started, 0

    def maybe_say(self) -> None:
        now, reports = time.perf_counter(), self.turnaround.reports
        if now - self.said_at < self.every_s:
            return
        print(
            f"[big fleet] rollout at {now - self.started:.0f} s: {reports} step reports, "
            f"{(reports - self.said_reports) / (now - self.said_at):.1f}/s since the last line, "
            f"load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        self.said_at, self.said_reports = now, reports
