"""How many client connections one nats-server takes on this machine, and what each costs (issue 21 item 2).

Run: `.venv/bin/pytest -m bench -s tests/bench/bench_connections.py`. The baseline under the 100,000-node fleet,
with no Flotilla code: nats-server (plain user/password, no auth callout, no JetStream use) and raw nats-py client
processes, each opening BENCH_CONN_PER_PROCESS (7,500) connections, BENCH_CONN_TOTAL (30,000) in all.

Two walls decide the layout. Every connection is an open file in nats-server: one server holds at most its
open-files limit (the hard limit of this session, `ulimit -Hn`; nats-server raises its soft limit to it, and
only root with CAP_SYS_RESOURCE can raise the hard one), past it nats-server logs `accept4: too many open files`
and the clients time out. So BENCH_CONN_SERVERS (default: as many as the limit needs) nats-servers run as one
NATS cluster (routes between them), the client processes spread over them. And one client address to one server
address:port carries at most the kernel's ephemeral port range (`net.ipv4.ip_local_port_range`, 32768-60999:
28,232): BENCH_CONN_ADDRESSES loopback addresses (127.0.0.1, .2, ...; default: one per 25,000 connections of a
server, which then listens on 0.0.0.0) spread them.

Printed: connections/s while connecting (BENCH_CONN_IN_FLIGHT, 64 per process, at once) and the CPU-ms each
connection cost the server and the clients, resident memory per 10,000 connections in nats-server and in the
clients, and CPU at rest over BENCH_CONN_REST_S (30 s; keep-alive pings every BENCH_CONN_PING_S, 120 s as
nats-py's and nats-server's default), with the load average.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from bench_support import cpu_seconds, report, rss_mib

from flotilla_client.natsserver import ANY_ADDRESS, NatsServer, free_port
from flotilla_client.openfiles import raise_open_files

pytestmark = pytest.mark.bench

TOTAL = int(os.environ.get("BENCH_CONN_TOTAL", "30000"))
PER_PROCESS = int(os.environ.get("BENCH_CONN_PER_PROCESS", "7500"))
HEADROOM = 500  # a server's own files (JetStream, log, listeners) below its open-files limit
IN_FLIGHT = int(os.environ.get("BENCH_CONN_IN_FLIGHT", "64"))
REST_S = float(os.environ.get("BENCH_CONN_REST_S", "30"))
PING_S = int(os.environ.get("BENCH_CONN_PING_S", "120"))
USER, PASSWORD = "bench", "bench-connections"

# One client process: `count` plain connections to `url`, `in_flight` at a time; reports, then holds them until
# its stdin closes. The first error of each kind is kept (the port-range wall is EADDRNOTAVAIL).
_CLIENT = """
import asyncio, json, resource, sys, nats
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
url, count, in_flight, ping = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
async def main():
    print(json.dumps({"started": True}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    clients, errors, failed = [], {}, 0
    todo = iter(range(count))
    async def worker():
        nonlocal failed
        for _ in todo:
            try:
                clients.append(await nats.connect(url, connect_timeout=20, allow_reconnect=False,
                                                  ping_interval=ping, max_outstanding_pings=3))
            except Exception as exc:
                failed += 1
                errors.setdefault(type(exc).__name__, str(exc)[:160])
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    print(json.dumps({"connected": len(clients), "failed": failed, "errors": errors}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
asyncio.run(main())
"""


def port_range() -> int:
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return int(high) - int(low) + 1


async def line(proc: asyncio.subprocess.Process) -> dict[str, object]:
    assert proc.stdout is not None
    raw = await proc.stdout.readline()
    assert raw, f"client process {proc.pid} exited with {await proc.wait()}"
    loaded: dict[str, object] = json.loads(raw)
    return loaded


def busiest(servers: int) -> int:
    """Connections of the busiest server: client processes go to the servers in turn."""
    processes = -(-TOTAL // PER_PROCESS)
    counts = [min(PER_PROCESS, TOTAL - i * PER_PROCESS) for i in range(processes)]
    return max(sum(counts[s::servers]) for s in range(servers))


def closed_reasons(servers: list[NatsServer]) -> str:
    """Why the servers closed client connections, counted from their logs ("" when none was closed)."""
    reasons: Counter[str] = Counter()
    for server in servers:
        if server.log_file is not None and server.log_file.exists():
            for log_line in server.log_file.read_text(errors="replace").splitlines():
                if " - cid:" in log_line and ("connection closed: " in log_line or "[ERR]" in log_line):
                    reasons[log_line.rsplit(" - ", 1)[-1][:80]] += 1  # a client's, not a route's (rid:)
    return "; ".join(f"{n} x {reason}" for reason, n in reasons.most_common(4))


def layout(hard_limit: int) -> tuple[int, int]:
    """(servers, loopback addresses per server) for TOTAL connections under these two walls."""
    servers = int(os.environ.get("BENCH_CONN_SERVERS", "0"))
    if not servers:  # the fewest that keep every server under its open-files limit
        servers = next(n for n in range(1, TOTAL + 1) if busiest(n) <= hard_limit - HEADROOM)
    per_server = busiest(servers)
    return servers, int(os.environ.get("BENCH_CONN_ADDRESSES", str(-(-per_server // 25_000))))


def start_servers(tmp_path: Path, count: int, host: str, per_server: int) -> list[NatsServer]:
    """`count` nats-servers routed into one NATS cluster (one server: no cluster)."""
    ports = [free_port() for _ in range(count)]
    routes_ports = [free_port() for _ in range(count)]
    servers = []
    for i, port in enumerate(ports):
        # authorization timeout 5 s as `flotilla up` has it (nats-server's default: 2 s from accept to CONNECT)
        config = f'authorization {{ user: "{USER}", password: "{PASSWORD}", timeout: 5 }}\nping_interval: "{PING_S}s"'
        if count > 1:
            routes = ", ".join(f'"nats://127.0.0.1:{p}"' for j, p in enumerate(routes_ports) if j != i)
            config += f'\ncluster {{ name: "bench", listen: "127.0.0.1:{routes_ports[i]}", routes: [{routes}] }}'
        server = NatsServer(
            state_dir=tmp_path / f"nats-{i}",
            port=port,
            host=host,
            log_file=tmp_path / f"nats-{i}.log",
            max_connections=per_server + 100,
            extra_config=config,
        )
        server.start()
        servers.append(server)
    return servers


@pytest.mark.timeout(3600)
async def test_connections_nats_servers_take(tmp_path: Path) -> None:
    limits = raise_open_files(TOTAL + 4096)  # nats-server (Go raises its soft limit to the hard one) and clients
    servers_n, addresses = layout(limits.hard)
    per_server = busiest(servers_n)
    assert per_server <= limits.hard - HEADROOM, (
        f"{per_server} connections a server, over its open-files limit: {limits.advice()}"
    )
    assert limits.hard - HEADROOM >= PER_PROCESS, f"BENCH_CONN_PER_PROCESS over the open-files limit {limits.hard}"
    servers = start_servers(tmp_path, servers_n, ANY_ADDRESS if addresses > 1 else "127.0.0.1", per_server)
    spids = [s.process.pid for s in servers if s.process is not None]
    processes = -(-TOTAL // PER_PROCESS)
    clients: list[asyncio.subprocess.Process] = []
    try:
        for i in range(processes):
            server = servers[i % servers_n]
            address = f"127.0.0.{1 + (i // servers_n) % addresses}"
            count = min(PER_PROCESS, TOTAL - i * PER_PROCESS)
            url = f"nats://{USER}:{PASSWORD}@{address}:{server.port}"
            argv = [url, str(count), str(IN_FLIGHT), str(PING_S)]
            clients.append(
                await asyncio.create_subprocess_exec(
                    sys.executable, "-c", _CLIENT, *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
                )
            )
        for proc in clients:
            await line(proc)  # started, nothing connected yet

        def server_cpu() -> float:
            return sum(cpu_seconds(pid) for pid in spids)

        def client_cpu() -> float:
            return sum(cpu_seconds(p.pid) for p in clients)

        server_rss0 = sum(rss_mib(pid) for pid in spids)
        client_rss0 = sum(rss_mib(p.pid) for p in clients)
        server_cpu0, client_cpu0 = server_cpu(), client_cpu()
        started = time.perf_counter()
        for proc in clients:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
        results = [await line(proc) for proc in clients]
        took = time.perf_counter() - started
        connected = sum(int(str(r["connected"])) for r in results)
        failed = sum(int(str(r["failed"])) for r in results)
        errors: dict[str, str] = {}
        for r in results:
            errors |= dict(r["errors"])  # type: ignore[call-overload]
        server_cpu1, client_cpu1 = server_cpu(), client_cpu()
        server_rss1 = sum(rss_mib(pid) for pid in spids)
        client_rss1 = sum(rss_mib(p.pid) for p in clients)
        await asyncio.sleep(REST_S)  # sleep: the at-rest sampling window itself, not a wait for a condition
        server_cpu2, client_cpu2 = server_cpu(), client_cpu()
        per = max(1, connected)
        per_address = -(-per_server // addresses)
        figures = {
            "connections": f"{connected} of {TOTAL} ({failed} failed) from {processes} processes",
            "layout": f"{servers_n} nats-server(s) (one NATS cluster), ~{per_server} connections each over "
            f"{addresses} loopback address(es) (~{per_address} per address:port; port range {port_range()})",
            "errors": "; ".join(f"{k}: {v}" for k, v in errors.items()) or "none",
            "server closed or refused": closed_reasons(servers) or "none",
            "open-files limit": f"soft {limits.soft}, hard {limits.hard}",
            "connecting": f"{took:.1f} s, {connected / took:.0f} connections/s ({IN_FLIGHT} in flight per process)",
            "CPU per connection made": f"nats-server {1000 * (server_cpu1 - server_cpu0) / per:.2f} ms, "
            f"clients {1000 * (client_cpu1 - client_cpu0) / per:.2f} ms",
            "RSS per 10,000 connections": f"nats-server {(server_rss1 - server_rss0) * 10_000 / per:.0f} MiB "
            f"({server_rss1:.0f} MiB in all), clients {(client_rss1 - client_rss0) * 10_000 / per:.0f} MiB "
            f"({client_rss1:.0f} MiB in all)",
            f"at rest over {REST_S:g} s (pings every {PING_S} s)": f"nats-server "
            f"{100 * (server_cpu2 - server_cpu1) / REST_S:.1f}% of a core, "
            f"clients {100 * (client_cpu2 - client_cpu1) / REST_S:.1f}%",
            "load average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        }
        report("connections to nats-server (raw nats-py)", figures)
        if per_address <= port_range() - 1000:  # room left in every address's port range: all must connect
            assert failed == 0, errors
            assert connected == TOTAL
    finally:
        for proc in clients:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        for server in servers:
            server.stop()
