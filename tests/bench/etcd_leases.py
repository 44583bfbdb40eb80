"""The Lease path's floor, in its own process: compare-and-put renewals of N keys on etcd with aetcd.

A Kubernetes node heartbeat is a Lease renewal: the kubelet reads its Lease and writes it back with the
resourceVersion it read, which the API server turns into an etcd transaction (compare the key's mod revision,
put). This does exactly that transaction, with no API server in front (so it is a floor, not the real cost).

`python tests/bench/etcd_leases.py --port P --leases N --interval S` renews every lease once per interval,
spread over the interval in slices (as the heartbeat load generator does); `--max` renews as fast as
`--in-flight` concurrent transactions allow. It prints `{"n": renewals}` lines every 0.25 s and, on SIGTERM,
a last line with the result: renewals, failed compares, latency p50/p99 (ms) and how late it fell.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time

import aetcd  # type: ignore[import-untyped]

VALUE = b'{"holderIdentity":"node","leaseDurationSeconds":40,"renewTime":"2026-01-01T00:00:00.000000Z"}'


class Renewer:
    def __init__(self, client: aetcd.Client, leases: int) -> None:
        self.client = client
        self.keys = [f"/registry/leases/kube-node-lease/node-{i:06d}".encode() for i in range(leases)]
        self.revisions: dict[bytes, int] = {}
        self.latencies: list[float] = []
        self.renewed = 0
        self.failed = 0
        self.late_s = 0.0
        self.running = True

    async def create(self, in_flight: int) -> None:
        gate = asyncio.Semaphore(in_flight)

        async def one(key: bytes) -> None:
            async with gate:
                await self.client.put(key, VALUE)
                self.revisions[key] = (await self.client.get(key)).mod_revision

        await asyncio.gather(*(one(key) for key in self.keys))

    async def renew(self, key: bytes) -> None:
        tx = self.client.transactions
        started = time.perf_counter()
        ok, responses = await self.client.transaction(
            compare=[tx.mod(key) == self.revisions[key]], success=[tx.put(key, VALUE)], failure=[tx.get(key)]
        )
        self.latencies.append(time.perf_counter() - started)
        if ok:
            self.revisions[key] = responses[0].response_put.header.revision
            self.renewed += 1
        else:
            self.failed += 1

    async def paced(self, interval_s: float, slices: int = 50) -> None:
        per_slice = max(1, -(-len(self.keys) // slices))
        start = time.monotonic()
        round_ = 0
        while self.running:
            round_start = start + round_ * interval_s
            for index in range(0, len(self.keys), per_slice):
                await asyncio.gather(*(self.renew(key) for key in self.keys[index : index + per_slice]))
                delay = round_start + (index // per_slice + 1) * interval_s / slices - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)  # sleep: the load generator keeps its schedule (a rate, not a wait)
                if not self.running:
                    break
            round_ += 1
            self.late_s = max(self.late_s, time.monotonic() - (round_start + interval_s))

    async def flat_out(self, in_flight: int) -> None:
        async def worker(offset: int) -> None:
            i = offset
            while self.running:
                await self.renew(self.keys[i % len(self.keys)])
                i += in_flight

        await asyncio.gather(*(worker(w) for w in range(in_flight)))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--leases", type=int, default=10_000)
    parser.add_argument("--interval", type=float, default=4.0)
    parser.add_argument("--max", action="store_true", help="renew as fast as possible")
    parser.add_argument("--in-flight", type=int, default=256)
    args = parser.parse_args()
    async with aetcd.Client(host="127.0.0.1", port=args.port) as client:
        renewer = Renewer(client, args.leases)
        await renewer.create(args.in_flight)
        print(json.dumps({"ready": True, "n": 0}), flush=True)
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, lambda: setattr(renewer, "running", False))

        async def progress() -> None:
            while True:
                print(json.dumps({"n": renewer.renewed}), flush=True)
                await asyncio.sleep(0.25)  # sleep: the progress line's period

        ticker = asyncio.create_task(progress())
        await (renewer.flat_out(args.in_flight) if args.max else renewer.paced(args.interval))
        ticker.cancel()
        lat = renewer.latencies
        result = {
            "n": renewer.renewed,
            "failed": renewer.failed,
            "p50_ms": percentile(lat, 0.5) * 1000,
            "p99_ms": percentile(lat, 0.99) * 1000,
            "late_s": renewer.late_s,
        }
        print(json.dumps({"result": result}), flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main())
