"""What every benchmark shares: sizes from the environment, a raw nats-py baseline, and figure printing."""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import nats

# A tiny responder in its own process: the fastest a request/reply can be with nats-py on this machine.
_ECHO = """
import asyncio, sys, nats
async def main():
    nc = await nats.connect(sys.argv[1])
    reply = b"x" * int(sys.argv[3])
    async def cb(msg):
        await msg.respond(reply)
    await nc.subscribe(sys.argv[2], queue="bench", cb=cb)
    await nc.flush()  # the server has the subscription before the bench sends (else: no responders)
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def scale(default: int) -> int:
    """FLOTILLA_BENCH_SCALE=0.1 runs a tenth of the default size (for a quick look)."""
    return max(1, int(default * float(os.environ.get("FLOTILLA_BENCH_SCALE", "1"))))


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def pipelined(count: int, in_flight: int, one: Callable[[int], Awaitable[float]]) -> tuple[float, list[float]]:
    """Run `one(i)` for i in range(count) with `in_flight` at a time; (elapsed seconds, latencies)."""
    latencies: list[float] = []
    queue = iter(range(count))

    async def worker() -> None:
        for i in queue:
            latencies.append(await one(i))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return time.perf_counter() - started, latencies


async def raw_request_rate(url: str, payload: bytes, reply_size: int, count: int, in_flight: int) -> float:
    """Requests/s of plain nats-py request/reply against an echo responder in another process."""
    responder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _ECHO, url, "bench.raw.echo", str(reply_size), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert responder.stdout is not None
        await responder.stdout.readline()
        nc = await nats.connect(url)

        async def one(_: int) -> float:
            started = time.perf_counter()
            await nc.request("bench.raw.echo", payload, timeout=10)
            return time.perf_counter() - started

        elapsed, _ = await pipelined(count, in_flight, one)
        await nc.close()
        return count / elapsed
    finally:
        responder.terminate()
        await responder.wait()


def report(title: str, figures: dict[str, str]) -> None:
    width = max(len(key) for key in figures)
    print(f"\n== {title} ==")
    for key, value in figures.items():
        print(f"  {key:<{width}}  {value}")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU seconds of a process so far (/proc/<pid>/stat), every thread included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def rss_mib(pid: int) -> float:
    """Resident memory of a process in MiB (/proc/<pid>/status), 0 when it reports none."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0
