"""A local fleet (`flotilla up` + `flotilla sim`) whose processes chaos tests SIGKILL one by one.

`flotilla up` leaves a supervisor that restarts whatever dies: a service on the same state folder (so the
same SQLite files), the sim with the same prefix, seed and state folder (its agents resume from their
journal and saved credentials), nats-server from the same configuration (its JetStream data stays in
<state>/nats). A kill here waits until the supervisor has recorded the new process in run.json.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from integration_support import fleet_events

from flotilla_client import procs, runfile
from flotilla_client.client import FlotillaClient
from flotilla_client.natsserver import free_port, port_open
from flotilla_contracts.subjects import Service
from flotilla_contracts.v1 import heartbeat as hb
from flotilla_runtime import logins
from flotilla_testkit import eventually, eventually_sync

FLOTILLA = str(Path(sys.executable).parent / "flotilla")
Event = tuple[str, str, dict[str, Any]]
KILLABLE = [Service.REGISTRATION, Service.HEARTBEAT, Service.UPGRADE_ORCHESTRATOR]


def flotilla(state: Path, *args: str, timeout: float = 120) -> str:
    done = subprocess.run([FLOTILLA, "--state-dir", str(state), *args], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


@dataclass
class ChaosFleet:
    state: Path
    prefix: str
    clusters: int
    nodes: int
    step_s: float
    versions: str = "v1.29.6,v1.30.2"
    sim_args: list[str] = field(default_factory=list)  # e.g. ["--fault", "x-0001-n02=agent_crash"]
    port: int = field(default_factory=free_port)
    kills: Counter[str] = field(default_factory=Counter)

    @property
    def url(self) -> str:
        """The admin URL `flotilla up` recorded (the bus has authentication on)."""
        return runfile.server_url(self.state) or f"nats://127.0.0.1:{self.port}"

    def up(self) -> None:
        flotilla(self.state, "up", "--port", str(self.port), "--monitor-port", "0")
        self.sim()

    def sim(self) -> None:
        sizes = ["--clusters", str(self.clusters), "--nodes", str(self.nodes), "--prefix", self.prefix]
        speed = ["--versions", self.versions, "--step-seconds", str(self.step_s), "--timeout", "90"]
        flotilla(self.state, "sim", *sizes, *speed, *self.sim_args)

    def down(self) -> None:
        subprocess.run([FLOTILLA, "--state-dir", str(self.state), "down"], capture_output=True, timeout=120)

    def _kill(self, name: str, pid_of: Callable[[runfile.RunInfo], int | None]) -> None:
        """SIGKILL one process and wait until its supervisor has started the next one."""
        info = runfile.load(self.state)
        assert info is not None
        old = pid_of(info)
        assert old, f"{name} is not running"
        os.kill(old, signal.SIGKILL)
        eventually_sync(lambda: not procs.alive(old), f"{name} (pid {old}) to die", timeout_s=30, every_s=0.02)

        def back() -> bool:
            now = runfile.load(self.state)
            pid = pid_of(now) if now else None
            return bool(pid) and pid != old and procs.alive(pid or 0)

        eventually_sync(back, f"the supervisor to start {name} again", timeout_s=30, every_s=0.02)
        self.kills[name] += 1

    def kill_service(self, service: Service) -> None:
        """SIGKILL one service; the supervisor starts it again on the same state folder."""
        self._kill(service.value, lambda info: next(s.pid for s in info.services if s.name == service.value))

    def kill_sim(self) -> None:
        """SIGKILL the process of every node-agent; the supervisor runs the sim again with the same arguments."""
        self._kill("sim", lambda info: next(s.pid for s in info.sims if s.prefix == self.prefix))

    def restart_nats(self) -> None:
        """SIGKILL nats-server; the supervisor starts it again from its config file (JetStream data kept)."""
        self._kill("nats-server", lambda info: info.nats.pid)
        eventually_sync(
            lambda: port_open("127.0.0.1", self.port), "nats-server to listen again", timeout_s=15, every_s=0.02
        )

    def journal(self) -> Path:
        return self.state / f"sim-{self.prefix}" / f"{self.prefix}-journal.db"

    def outboxes(self) -> dict[str, int]:
        """Rows still waiting in each service's (and the sim's) outbox."""
        sizes: dict[str, int] = {}
        for db in [*self.state.glob("*/*.db"), self.journal()]:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
                tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                if "outbox" in tables:
                    sizes[db.parent.name] = conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
        return sizes

    def journal_steps(self) -> list[tuple[str, str, str, str, str, str]]:
        """(cluster, node, rollout, step, command_id, status) of every step the agents journaled."""
        with sqlite3.connect(f"file:{self.journal()}?mode=ro", uri=True, timeout=10) as conn:
            return list(conn.execute("SELECT cluster_id, node_id, rollout_id, step, command_id, status FROM steps"))


async def request(url: str, service: Service, verb: str, body: Any, reply: type[Any]) -> Any:
    """One request on a fresh connection (the CLI client does not reconnect); errors are the caller's."""
    async with FlotillaClient(url) as client:
        return await client.request(service, verb, body, reply)


async def wait_ready(url: str, clusters: int, timeout_s: float = 60) -> None:
    await eventually(
        lambda: request(url, Service.HEARTBEAT, "health.summary", hb.FleetHealthRequest(), hb.FleetHealthReply),
        f"the simulated fleet's {clusters} clusters Ready",
        timeout_s=timeout_s,
        every_s=0.5,
        retrying=(Exception,),  # a service restarting: ask again
        until=lambda health: health.clusters.get(hb.ClusterHealth.READY, 0) >= clusters,
    )


COPY_HEADER = "Chaos-Copy"  # marks a copy a test injected on purpose, left out of the log it checks


async def all_events(url: str, *, skip_copies: bool = True) -> list[Event]:
    """Every event (FLEET_EVENTS and FLEET_REPORTS merged by time): (subject, schema, data), without injected copies."""
    nc = await logins.connect(url)
    try:
        return [
            (msg.subject, (msg.headers or {}).get("Flotilla-Schema", ""), msgspec.json.decode(msg.data))
            for msg in await fleet_events(nc)
            if not (skip_copies and (msg.headers or {}).get(COPY_HEADER))
        ]
    finally:
        await nc.close()
