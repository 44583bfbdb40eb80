"""Two upgrade-orchestrator processes on one state folder; the lease holder is SIGKILLed at seeded random points.

The case docs/upgrade-orchestrator.md promises the lease handles: a replacement running while the old pod is
alive, on the same volume. `flotilla up` supervises one orchestrator; the test starts a second one on the same
state folder (localfleet.start_service), a `flotilla sim` fleet does the steps. Each round SIGKILLs whichever
process holds the rollout's lease (the supervisor, or the test, starts a new one, so two run again), then
checks that the survivor takes over: a NodeStepCommand at a newer epoch goes out, and its status agrees with
the event log (no node shown behind what the log says it reached). The rollout must complete, every invariant
holds from the event log, and no step succeeded twice in the agents' journal. The seed is printed: set
FLOTILLA_TEST_SEED to replay a failure.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import nats
import nats.errors
import nats.js.errors
import pytest
from chaos_fleet import ChaosFleet, all_events, request, wait_ready
from nats.aio.msg import Msg
from rollout_invariants import FORWARD, check, final_states

from flotilla_client import localfleet, procs, runfile
from flotilla_contracts.subjects import Service
from flotilla_contracts.v1 import upgrade as up
from flotilla_contracts.v1 import upgrade_status as st
from flotilla_contracts.v1.agent import NodeStepCommand
from flotilla_runtime import logins
from flotilla_runtime.settings import env_prefix
from flotilla_testkit import ConditionNotMet, eventually

pytestmark = [pytest.mark.integration, pytest.mark.chaos]
UPG = Service.UPGRADE_ORCHESTRATOR
BUCKET = "upgrade_orchestrator_leases"
LEASE_TTL_S = 2.0
MAX_UNAVAILABLE = 1


class Lease(msgspec.Struct):
    owner: str
    epoch: int
    expires_at: float


@dataclass
class Commands:
    """Every NodeStepCommand as it goes out (a core subscription beside the agents' work queue)."""

    seen: list[tuple[float, NodeStepCommand]] = field(default_factory=list)

    async def on(self, msg: Msg) -> None:
        self.seen.append((time.monotonic(), msgspec.json.decode(msg.data, type=NodeStepCommand)))

    def first_at_epoch_above(self, epoch: int, since: float) -> float | None:
        return next((at for at, c in self.seen if at >= since and c.epoch > epoch), None)


@dataclass
class Pair:
    """The supervised orchestrator plus one the test runs, both on `flotilla up`'s state folder."""

    fleet: ChaosFleet
    extra: subprocess.Popen[bytes] | None = None
    extra_id: str = ""

    def start_extra(self) -> None:
        entry, self.extra = localfleet.start_service(UPG, self.fleet.state, self.fleet.url)
        self.extra_id = entry.instance_id

    def supervised(self) -> tuple[int, str]:
        info = runfile.load(self.fleet.state)
        assert info is not None
        entry = next(s for s in info.services if s.name == UPG.value)
        return entry.pid, entry.instance_id

    def kill_holder(self, owner: str) -> str:
        """SIGKILL the process whose instance id holds the lease; start another in its place."""
        if owner == self.extra_id and self.extra is not None:
            self.extra.send_signal(signal.SIGKILL)
            self.extra.wait(10)
            self.start_extra()
            return "extra"
        pid, instance = self.supervised()
        assert instance == owner, f"lease owner {owner} is neither {instance} nor {self.extra_id}"
        self.fleet.kill_service(UPG)  # waits until the supervisor started the next one
        assert not procs.alive(pid)
        return "supervised"

    def stop(self) -> None:
        if self.extra is not None:
            self.extra.terminate()
            try:
                self.extra.wait(15)
            except subprocess.TimeoutExpired:
                self.extra.kill()


async def lease_of(js: nats.js.JetStreamContext, rollout_id: str) -> Lease | None:
    try:
        kv = await js.key_value(BUCKET)
        entry = await kv.get(f"rollout.{rollout_id}")
    except (nats.js.errors.KeyNotFoundError, nats.js.errors.BucketNotFoundError, nats.errors.TimeoutError):
        return None
    return None if entry.value is None else msgspec.json.decode(entry.value, type=Lease)


async def status_of(url: str, rollout_id: str) -> st.RolloutStatusReply | None:
    try:
        return await request(  # type: ignore[no-any-return]
            url,
            UPG,
            "upgrade.status",
            st.RolloutStatusRequest(rollout_id=rollout_id, include_nodes=True, limit=100),
            st.RolloutStatusReply,
        )
    except Exception:  # the process that took the request died: ask again
        return None


async def status_agrees_with_log(url: str, rollout_id: str) -> list[str]:
    """Nodes whose status is behind what the event log says they reached (read the log first, then status)."""
    logged = final_states(await all_events(url))
    status = None
    while status is None:
        status = await status_of(url, rollout_id)
    wrong = []
    for cluster in status.clusters:
        for node in cluster.nodes:
            reached = logged.get((cluster.cluster_id, node.node_id), ("Pending", None))[0]
            if node.state.value in FORWARD and FORWARD.index(node.state.value) < FORWARD.index(reached):
                wrong.append(
                    f"{node.node_id}: status {node.state.value} (in flight {node.step_in_flight}), log {reached}"
                )
    return wrong


async def run_failovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, rounds: int, clusters: int, nodes: int
) -> None:
    seed = int(os.environ.get("FLOTILLA_TEST_SEED", str(random.randrange(1 << 30))))
    print(f"\nfailover seed {seed} (FLOTILLA_TEST_SEED={seed} replays it)")
    rng = random.Random(seed)
    prefix = env_prefix(UPG.value)
    monkeypatch.setenv(prefix + "LEASE_TTL_S", str(LEASE_TTL_S))  # both processes inherit it
    monkeypatch.setenv(prefix + "TICK_INTERVAL_S", "0.2")
    fleet = ChaosFleet(tmp_path / ".flotilla", prefix="fo", clusters=clusters, nodes=nodes, step_s=0.3)
    pair = Pair(fleet)
    nc = None
    try:
        await asyncio.to_thread(fleet.up)
        await wait_ready(fleet.url, clusters)
        pair.start_extra()
        nc = await logins.connect(fleet.url)
        js = nc.jetstream()
        commands = Commands()
        await nc.subscribe("fleet.v1.agent.*.*.step", cb=commands.on)
        spec = up.RolloutSpec(
            target_version="v1.30.4",
            max_concurrent_clusters=2,
            max_unavailable=MAX_UNAVAILABLE,
            failure_budget=up.FailureBudget(max_failed_nodes=0),
        )
        start = up.StartRolloutRequest(request_id=f"failover-{seed}", spec=spec)
        started = await eventually(
            lambda: request(fleet.url, UPG, "upgrade.start", start, up.StartRolloutReply),
            "the rollout to start",
            timeout_s=60,
            every_s=0.5,
            retrying=(Exception,),  # a process still reading the fleet: ask again
        )
        rollout_id = started.rollout_id
        total = clusters * nodes * 5
        takeovers: list[str] = []
        for n in range(rounds):
            # A random point: after a seeded share of the steps (5 per node) has been issued.
            mark = int(total * (n + rng.uniform(0.2, 0.9)) / (rounds + 1))
            try:
                await eventually(
                    lambda mark=mark: len(commands.seen) >= mark,
                    f"round {n} (seed {seed}): {mark} commands",
                    timeout_s=30,
                )
            except ConditionNotMet as stalled:
                wrong = await status_agrees_with_log(fleet.url, rollout_id)
                raise AssertionError(f"{stalled}: stalled at {len(commands.seen)}; status {wrong}") from stalled
            lease = await lease_of(js, rollout_id)
            assert lease is not None and lease.expires_at > time.time(), f"round {n}: nobody holds the lease: {lease}"
            killed_at = time.monotonic()
            which = await asyncio.to_thread(pair.kill_holder, lease.owner)

            async def taken_over(
                epoch: int = lease.epoch, since: float = killed_at
            ) -> tuple[float | None, st.RolloutStatusReply | None]:
                """(when the first command at a higher epoch came, the status): the new holder's first command."""
                return commands.first_at_epoch_above(epoch, since), await status_of(fleet.url, rollout_id)

            took, _ = await eventually(
                taken_over,
                f"round {n} (seed {seed}): a command at an epoch above {lease.epoch} after killing the {which} holder",
                timeout_s=30,
                every_s=0.1,
                until=lambda seen: (
                    seen[0] is not None or (seen[1] is not None and seen[1].rollout.state is st.RolloutState.SUCCEEDED)
                ),
            )
            after = await lease_of(js, rollout_id)
            wrong = await status_agrees_with_log(fleet.url, rollout_id)
            assert not wrong, f"round {n} (seed {seed}): status behind the event log: {wrong}"
            line = f"round {n}: killed the {which} holder (epoch {lease.epoch}) after {mark} commands; "
            line += "rollout already done" if took is None else f"first command at epoch {after and after.epoch}"
            line += "" if took is None else f" {took - killed_at:.1f}s later"
            takeovers.append(line)
            print("  " + line)
        status = await eventually(
            lambda: status_of(fleet.url, rollout_id),
            f"seed {seed}: the rollout to end",
            timeout_s=90,
            every_s=0.3,
            until=lambda s: s is not None and s.rollout.state in (st.RolloutState.SUCCEEDED, st.RolloutState.FROZEN),
        )
        assert status.rollout.state is st.RolloutState.SUCCEEDED, (seed, status.rollout, status.failures)
        assert sum(1 for t in takeovers if "first command" in t) >= min(rounds, 3), takeovers
        events = await all_events(fleet.url)
        verdict = check(events, max_unavailable=MAX_UNAVAILABLE, max_clusters=2)
        assert not verdict.violations, verdict.violations
        finals = final_states(events)
        assert len(finals) == clusters * nodes and all(v[0] == "Uncordoned" for v in finals.values()), finals
        assert not await status_agrees_with_log(fleet.url, rollout_id)
        journal = [row for row in fleet.journal_steps() if row[2] == rollout_id]
        ran = Counter((c, n, s) for c, n, _r, s, _cid, status_ in journal if status_ == "succeeded")
        assert not [k for k, v in ran.items() if v > 1], f"I4 (seed {seed}): steps that succeeded twice: {ran}"
    finally:
        if nc is not None:
            await nc.close()
        pair.stop()
        await asyncio.to_thread(fleet.down)


@pytest.mark.timeout(170)
async def test_the_survivor_takes_over_at_each_kill(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    await run_failovers(tmp_path, monkeypatch, rounds=5, clusters=3, nodes=4)


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_the_survivor_takes_over_at_each_kill_long(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    await run_failovers(tmp_path, monkeypatch, rounds=12, clusters=8, nodes=5)
