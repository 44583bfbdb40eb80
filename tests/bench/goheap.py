"""Go heap profiles read over HTTP (nats-server's `prof_port`): in-use bytes by allocation site, and MemStats.

For the memory benchmarks (bench_connection_memory): where a Go server's memory goes, without Go's pprof tool.
"""

from __future__ import annotations

import math
import re
import urllib.request
from collections import Counter

_RECORD = re.compile(r"^(\d+): (\d+) \[\d+: \d+\] @")
_FRAME = re.compile(r"^#\s+0x[0-9a-f]+\s+(\S+)")
_STAT = re.compile(r"^# (\w+) = (\d+)")
_HEADER = re.compile(r"@ heap/(\d+)")  # twice the sampling rate the process ran with
# runtime.MemProfileRate of the servers started here (GODEBUG): the profile's records are samples, scaled back as
# pprof does; one sample every 4 KiB allocated instead of Go's default 512 KiB, so the per-connection sites show.
PROFILE_RATE = 4096


def _site(frames: list[str]) -> str:
    """The allocation's three innermost nats-server frames (runtime and library frames skipped)."""
    ours = [
        re.sub(r"\+0x[0-9a-f]+$", "", f.rsplit("/", 1)[-1].removeprefix("server."))
        for f in frames
        if "/v2/server." in f
    ]
    return " < ".join(ours[:3]) or (frames[0].rsplit("/", 1)[-1] if frames else "?")


def heap(prof_port: int) -> tuple[Counter[str], dict[str, int], int]:
    """(inuse bytes by site, runtime.MemStats, goroutines) after a forced GC."""
    base = f"http://127.0.0.1:{prof_port}/debug/pprof"
    with urllib.request.urlopen(f"{base}/heap?gc=1&debug=1", timeout=60) as answer:
        text = answer.read().decode()
    with urllib.request.urlopen(f"{base}/goroutine?debug=1", timeout=60) as answer:
        goroutines = int(answer.readline().decode().rsplit(" ", 1)[-1])
    header = _HEADER.search(text.partition("\n")[0])
    rate = int(header[1]) // 2 if header else PROFILE_RATE
    sites: Counter[str] = Counter()
    stats: dict[str, int] = {}
    objects = size = 0
    frames: list[str] = []

    def close() -> None:
        if objects and size:
            scale = 1 / (1 - math.exp(-(size / objects) / rate))
            sites[_site(frames)] += int(size * scale)

    for raw in text.splitlines():
        if record := _RECORD.match(raw):
            close()
            objects, size, frames = int(record[1]), int(record[2]), []
        elif frame := _FRAME.match(raw):
            frames.append(frame[1])
        elif stat := _STAT.match(raw):
            stats[stat[1]] = int(stat[2])
    close()
    return sites, stats, goroutines


def retained(stats: dict[str, int]) -> int:
    """Heap memory free but not yet given back to the system (it still counts in RSS)."""
    return stats.get("HeapIdle", 0) - stats.get("HeapReleased", 0)


def runtime_books(stats: dict[str, int]) -> int:
    """The Go runtime's own books: span structures, GC metadata, profiling buckets and the rest."""
    return sum(stats.get(name, 0) for name in ("MSpan", "MCache", "GCSys", "BuckHashSys", "OtherSys"))
