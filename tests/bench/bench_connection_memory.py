"""Where nats-server's memory per agent connection goes (issue 21 item 2): one kind of connection at a time.

Run: `.venv/bin/pytest -m bench -s tests/bench/bench_connection_memory.py`. BENCH_MEM_CONNECTIONS (2,000) connections
of each kind, each kind on a fresh nats-server (its RSS from /proc before and after, per connection, once they have
rested BENCH_MEM_SETTLE_S), opened by one client process, BENCH_MEM_IN_FLIGHT (64) at a time:

- raw: user/password, no subscription (the bench_connections baseline);
- subs: raw + what an agent subscribes: its command subjects (`fleet.v1.agent.<cluster>.<node>.>`, its wake-up)
  and nats-py's request mux (`<inbox prefix>.<nuid>.*`, made by one request: the heartbeat config);
- callout: the same through an auth callout answering with a user JWT without permissions;
- grant: the same through the callout with the real node grant (permissions.node_grant, encoded as registration
  does: callout.user_permissions, natsjwt.user_jwt, a 600 s expiry);
- grant less host keys: the node grant without the cluster's host keys (what they cost);
- grant with nats-server under GOGC=BENCH_MEM_GOGC (50), and under GOMEMLIMIT (its idle size + BENCH_MEM_LIMIT_KIB,
  64 KiB, a connection): what Go's garbage collector keeps;
- agents (BENCH_MEM_AGENTS=1, the default): the real thing, `flotilla up` and `flotilla sim` with clusters of 10
  nodes (11 connections a cluster), nats-server's RSS before the sim and once every connection is up; again with
  GOMEMLIMIT given to `flotilla up` (idle + BENCH_MEM_AGENTS_LIMIT_KIB, 80 KiB, a connection; 0 skips it).

For the synthetic kinds the server's heap profile (prof_port, after a forced GC; goheap) splits the heap by where it
was allocated (the innermost server frames), each kind against the one it adds to, and runtime.MemStats gives the
goroutine stacks and the free heap Go keeps apart. Printed with the load average; nothing is asserted about them.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import goheap
import nats
import pytest
from bench_support import cpu_seconds, report, rss_mib
from nats.aio.msg import Msg

from flotilla_client import runfile
from flotilla_client.natsserver import NatsServer, free_port
from flotilla_contracts import permissions
from flotilla_contracts.permissions import FLEET_ACCOUNT, Grant
from flotilla_contracts.subjects import Entity
from flotilla_registration import natsjwt
from flotilla_registration.callout import user_permissions
from flotilla_registration.natskeys import new_account_seed, public_key
from flotilla_testkit import eventually

pytestmark = pytest.mark.bench

CONNECTIONS = int(os.environ.get("BENCH_MEM_CONNECTIONS", "2000"))
IN_FLIGHT = int(os.environ.get("BENCH_MEM_IN_FLIGHT", "64"))
AGENTS = os.environ.get("BENCH_MEM_AGENTS", "1") == "1"
# the real agents again with GOMEMLIMIT for `flotilla up` (nats-server inherits it): its idle size + this a connection
AGENTS_LIMIT_KIB = int(os.environ.get("BENCH_MEM_AGENTS_LIMIT_KIB", "80"))
SETTLE_S = float(os.environ.get("BENCH_MEM_SETTLE_S", "10"))
GOGC = os.environ.get("BENCH_MEM_GOGC", "50")  # a kind: the grant again, nats-server with this GOGC
# a kind: the grant again, nats-server with GOMEMLIMIT at its idle size plus this many KiB a connection
LIMIT_KIB = int(os.environ.get("BENCH_MEM_LIMIT_KIB", "64"))


@dataclass(frozen=True)
class Kind:
    """How the connections of one kind log in, what they are granted and subscribe, and nats-server's GOGC."""

    name: str
    login: str  # "static" (user/password in the configuration) or "callout"
    grant: Callable[[str, str], Grant] | None = None  # (cluster, node) -> what the callout grants; None: no limits
    subscribes: bool = True
    gogc: str = ""  # "" leaves Go's default (100)
    limit_kib: int = 0  # GOMEMLIMIT: nats-server's idle size + this many KiB a connection (0: none)


def _without_host_keys(cluster_id: str, node: str) -> Grant:
    """The node grant less the cluster's host keys (what a node that manages no authorized_keys would need)."""
    grant = permissions.node_grant(cluster_id, node)
    host_keys = f".{Entity.HOST_KEYS.value}."
    return Grant(
        publish=tuple(s for s in grant.publish if host_keys not in s),
        subscribe=tuple(s for s in grant.subscribe if host_keys not in s),
        responses=grant.responses,
    )


KINDS = (
    Kind("raw", "static", subscribes=False),
    Kind("subs", "static"),
    Kind("callout", "callout"),
    Kind("grant", "callout", permissions.node_grant),
    Kind("grant less host keys", "callout", _without_host_keys),
    Kind(f"grant, GOGC={GOGC}", "callout", permissions.node_grant, gogc=GOGC),
    Kind(f"grant, GOMEMLIMIT +{LIMIT_KIB} KiB a connection", "callout", permissions.node_grant, limit_kib=LIMIT_KIB),
)
IDLE_MIB = 32  # a little over an idle nats-server's RSS here (17-20 MiB), for the GOMEMLIMIT kind
RAW_USER, RAW_PASSWORD = "bench", "bench-memory"
FLOTILLA = str(Path(sys.executable).parent / "flotilla")
NODES = 10  # a cluster's nodes: the synthetic identities are c.m<i // 10>.n<i % 10>

# One client process: `count` connections of `kind`, `in_flight` at a time; prints a summary, then holds them until
# its stdin closes.
_CLIENT = """
import asyncio, json, sys, nats
from flotilla_contracts import permissions, subjects
from flotilla_contracts.subjects import Service
host, port, login, subscribes = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
count, in_flight = int(sys.argv[5]), int(sys.argv[6])
CONFIG = subjects.command(Service.HEARTBEAT, "config.get")
async def one(i):
    cluster, node = f"m{i // 10:05d}", f"n{i % 10:02d}"
    user = permissions.cluster_user(cluster, node)
    name, password = ("bench", "bench-memory") if login == "static" else (user, "any")
    nc = await nats.connect(f"nats://{name}:{password}@{host}:{port}", connect_timeout=20,
                            allow_reconnect=False, inbox_prefix=permissions.inbox_prefix(user))
    if subscribes:
        async def woken(msg):
            pass
        await nc.subscribe(subjects.agent_commands_for(cluster, node), cb=woken)
        try:
            await nc.request(CONFIG, b"", timeout=1)  # no one answers: it only makes the request mux
        except Exception:
            pass
    return nc
async def main():
    clients, errors = [], {}
    todo = iter(range(count))
    async def worker():
        for i in todo:
            try:
                clients.append(await one(i))
            except Exception as exc:
                errors.setdefault(type(exc).__name__, str(exc)[:160])
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    for nc in clients:
        await nc.flush()
    print(json.dumps({"connected": len(clients), "errors": errors}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
asyncio.run(main())
"""


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


class Callout:
    """An auth callout answering every request with `grant` of the user name's cluster and node (None: no limits)."""

    def __init__(self, seed: str, grant: Callable[[str, str], Grant] | None) -> None:
        self.seed, self.grant, self.answered = seed, grant, 0

    async def on_request(self, msg: Msg) -> None:
        request = natsjwt.decode_request(msg.data)
        user = request.connect_opts.user
        parsed = permissions.parse_agent_user(user)
        assert parsed is not None, user
        _, cluster_id, node = parsed
        grant = self.grant(cluster_id, node) if self.grant else Grant(publish=(), subscribe=(), responses=False)
        user_jwt = natsjwt.user_jwt(
            self.seed, user_nkey=request.user_nkey, account=FLEET_ACCOUNT, name=user,
            permissions=user_permissions(grant, 600), expires_in_s=600,
        )  # fmt: skip
        reply = natsjwt.response_jwt(
            self.seed, user_nkey=request.user_nkey, server_id=request.server_id.id, user_jwt=user_jwt
        )
        self.answered += 1
        await msg.respond(reply.encode())


def server_config(issuer: str, prof_port: int, callout: bool) -> str:
    """The callout's user and the static user; without `callout` no auth callout at all (an `auth_users` member
    carries a deny-permission list of its own, the callout subject: not part of the raw baseline)."""
    if not callout:
        return f"""
prof_port: {prof_port}
authorization {{ timeout: 5, users: [ {{ user: "{RAW_USER}", password: "{RAW_PASSWORD}" }} ] }}
"""
    return f"""
prof_port: {prof_port}
accounts {{
  {FLEET_ACCOUNT} {{ jetstream: enabled, users: [ {{ user: auth, password: authpw }} ] }}
  SYS {{}}
}}
system_account: SYS
authorization {{
  timeout: 5
  auth_callout {{ issuer: {issuer}, auth_users: [ auth ], account: {FLEET_ACCOUNT} }}
}}
"""


@asynccontextmanager
async def server(tmp_path: Path, kind: Kind) -> AsyncIterator[tuple[NatsServer, int]]:
    """A fresh nats-server with the callout answered by this process; (server, its profiling port)."""
    seed, prof, folder = new_account_seed(), free_port(), re.sub(r"\W+", "-", kind.name)
    nats_server = NatsServer(
        state_dir=tmp_path / folder, port=free_port(), log_file=tmp_path / f"{folder}.log",
        extra_config=server_config(public_key(seed), prof, kind.login == "callout"),
    )  # fmt: skip
    # nats-server inherits the environment: a finer heap profile, and the kind's GOGC
    limit = f"{IDLE_MIB * 1024 + kind.limit_kib * CONNECTIONS}KiB" if kind.limit_kib else None
    env = {"GODEBUG": f"memprofilerate={goheap.PROFILE_RATE}", "GOGC": kind.gogc or None, "GOMEMLIMIT": limit}
    saved = {name: os.environ.get(name) for name in env}
    try:
        _set_environment(env)
        nats_server.start()
    finally:
        _set_environment(saved)
    try:
        if kind.login != "callout":
            yield nats_server, prof
            return
        auth = await nats.connect(nats_server.url, user="auth", password="authpw")
        try:
            await auth.subscribe(permissions.AUTH_CALLOUT_SUBJECT, cb=Callout(seed, kind.grant).on_request)
            await auth.flush()
            yield nats_server, prof
        finally:
            await auth.close()
    finally:
        nats_server.stop()


def _set_environment(values: dict[str, str | None]) -> None:
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


# --- the synthetic kinds ----------------------------------------------------------------------------------------


async def measure(tmp_path: Path, kind: Kind) -> dict[str, object]:
    async with server(tmp_path, kind) as (nats_server, prof):
        assert nats_server.process is not None
        pid = nats_server.process.pid
        sites0, stats0, goroutines0 = goheap.heap(prof)
        rss0, cpu0 = rss_mib(pid), cpu_seconds(pid)
        subscribes = "1" if kind.subscribes else "0"
        argv = [nats_server.host, str(nats_server.port), kind.login, subscribes, str(CONNECTIONS), str(IN_FLIGHT)]
        client = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _CLIENT, *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        try:
            assert client.stdout is not None and client.stdin is not None
            started = time.perf_counter()
            summary = json.loads(await client.stdout.readline() or b"{}")
            took, cpu1 = time.perf_counter() - started, cpu_seconds(pid)
            await asyncio.sleep(SETTLE_S)  # sleep: let the server's buffers shrink back, as at rest
            rss1 = rss_mib(pid)
            sites1, stats1, goroutines1 = goheap.heap(prof)
            client.stdin.close()
            await client.wait()
        finally:
            if client.returncode is None:
                client.kill()
                await client.wait()
    connected = int(summary.get("connected", 0))
    n = max(1, connected)
    sites = Counter({site: (sites1[site] - sites0.get(site, 0)) / n for site in sites1})
    return {
        "connected": connected, "errors": summary.get("errors", {}), "took": took,
        "kib": (rss1 - rss0) * 1024 / max(1, connected), "rss": (rss0, rss1), "sites": sites,
        "stack_kib": (stats1.get("Stack", 0) - stats0.get("Stack", 0)) / 1024 / n,
        "heap_kib": (stats1.get("HeapInuse", 0) - stats0.get("HeapInuse", 0)) / 1024 / n,
        "idle_kib": (goheap.retained(stats1) - goheap.retained(stats0)) / 1024 / n,
        "runtime_kib": (goheap.runtime_books(stats1) - goheap.runtime_books(stats0)) / 1024 / n,
        "goroutines": (goroutines1 - goroutines0) / n, "cpu_ms": (cpu1 - cpu0) * 1000 / n,
    }  # fmt: skip


def breakdown(results: dict[str, dict[str, object]]) -> dict[str, str]:
    """The heap's biggest differences by allocation site, in bytes per connection, between each kind and the kind
    it adds to (the same server settings: the GOGC and GOMEMLIMIT kinds are left out)."""
    lines: dict[str, str] = {}
    names = [kind.name for kind in KINDS if not kind.gogc and not kind.limit_kib]
    for name, base in zip(names, [None, *names[:-1]], strict=True):
        sites: Counter[str] = results[name]["sites"]  # type: ignore[assignment]
        before: Counter[str] = results[base]["sites"] if base else Counter()  # type: ignore[assignment]
        more = {s: sites.get(s, 0) - before.get(s, 0) for s in set(sites) | set(before)}
        top = sorted(more.items(), key=lambda item: -abs(item[1]))[:8]
        shown = [f"{b / 1024:+.1f} KiB {s}" for s, b in top if abs(b) > 64]
        lines[f"{name}: heap against {base or 'an idle server'}"] = "; ".join(shown) or "nothing over 64 B"
    return lines


# --- the real agents --------------------------------------------------------------------------------------------


async def cli(state: Path, *args: str, limit: str = "") -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOTILLA_")}
    env |= {"GOMEMLIMIT": limit} if limit else {}
    proc = await asyncio.create_subprocess_exec(
        FLOTILLA, "--state-dir", str(state), *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, (args, out.decode()[-2000:], err.decode()[-2000:])
    return out.decode()


def monitor(port: int, path: str) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/{path}", timeout=30) as answer:
        loaded: dict[str, object] = json.load(answer)
        return loaded


async def measure_agents(tmp_path: Path, limit_kib: int = 0) -> tuple[float, str]:
    """`flotilla up` (with GOMEMLIMIT at IDLE_MIB + `limit_kib` a connection when given), then a sim of whole
    clusters (about CONNECTIONS connections): nats-server's RSS per connection added."""
    clusters = max(1, CONNECTIONS // (NODES + 1))
    limit = f"{IDLE_MIB * 1024 + limit_kib * clusters * (NODES + 1)}KiB" if limit_kib else ""
    state, port = tmp_path / f"agents-{limit_kib}" / ".flotilla", free_port()
    await cli(state, "up", "--port", str(free_port()), "--monitor-port", str(port), limit=limit)
    try:
        info = runfile.load(state)
        assert info is not None and info.nats.pid
        await asyncio.sleep(SETTLE_S)  # sleep: the stack at rest before the fleet
        before, rss0 = int(str(monitor(port, "varz")["connections"])), rss_mib(info.nats.pid)
        cpu0, started = cpu_seconds(info.nats.pid), time.perf_counter()
        await cli(state, "sim", "--clusters", str(clusters), "--nodes", str(NODES), "--versions", "v1.29.6",
                  "--prefix", "m", "--step-seconds", "0", "--batch-heartbeats", "--timeout", "900")  # fmt: skip
        wanted = before + clusters * (NODES + 1)
        await eventually(
            lambda: int(str(monitor(port, "varz")["connections"])) >= wanted, "every agent connected", timeout_s=600
        )
        took, cpu1 = time.perf_counter() - started, cpu_seconds(info.nats.pid)
        await asyncio.sleep(SETTLE_S)  # sleep: the fleet at rest
        rss1 = rss_mib(info.nats.pid)
        varz = monitor(port, "varz")
        added = int(str(varz["connections"])) - before
        subs = Counter(
            int(str(c.get("subscriptions", 0)))
            for c in monitor(port, "connz?auth=1&limit=100000")["connections"]  # type: ignore[attr-defined]
            if str(c.get("authorized_user", "")).startswith(f"{permissions.CLUSTER_USER_PREFIX}.")
        )
        detail = (
            f"{clusters} clusters x {NODES} nodes, {added} connections added, RSS {rss0:.0f} -> {rss1:.0f} MiB"
            f"{f' (GOMEMLIMIT {limit})' if limit else ''}, joined and connected in {took:.0f} s, nats-server CPU "
            f"{(cpu1 - cpu0) * 1000 / max(1, added):.2f} ms a connection meanwhile, subscriptions per agent "
            f"connection {dict(sorted(subs.items()))}"
        )
        return (rss1 - rss0) * 1024 / max(1, added), detail
    finally:
        await cli(state, "down")


@pytest.mark.timeout(3600)
async def test_nats_server_memory_per_agent_connection(tmp_path: Path) -> None:
    figures: dict[str, str] = {"connections of each kind": str(CONNECTIONS), "load average before": load()}
    results: dict[str, dict[str, object]] = {}
    for kind in KINDS:
        results[kind.name] = result = await measure(tmp_path, kind)
        raw = float(str(results["raw"]["kib"]))
        kib = float(str(result["kib"]))
        errors = result["errors"] or "none"
        rss: tuple[float, float] = result["rss"]  # type: ignore[assignment]
        figures[kind.name] = (
            f"{kib:.1f} KiB a connection ({kib / raw:.2f}x raw): heap in use {result['heap_kib']:.1f}, free heap "
            f"kept {result['idle_kib']:.1f}, goroutine stacks {result['stack_kib']:.1f}, Go runtime "
            f"{result['runtime_kib']:.1f} KiB, {result['goroutines']:.1f} goroutines; server CPU "
            f"{result['cpu_ms']:.2f} ms a connection; {result['connected']} up in {result['took']:.1f} s, RSS "
            f"{rss[0]:.0f} -> {rss[1]:.0f} MiB; errors: {errors}"
        )
    figures |= breakdown(results)
    if AGENTS:
        kib, detail = await measure_agents(tmp_path)
        figures["agents (flotilla sim)"] = f"{kib:.1f} KiB a connection ({kib / raw:.2f}x raw): {detail}"
        if AGENTS_LIMIT_KIB:
            kib, detail = await measure_agents(tmp_path, AGENTS_LIMIT_KIB)
            name = f"agents, GOMEMLIMIT +{AGENTS_LIMIT_KIB} KiB a connection"
            figures[name] = f"{kib:.1f} KiB a connection ({kib / raw:.2f}x raw): {detail}"
    figures["load average after"] = load()
    report("nats-server memory per agent connection", figures)
