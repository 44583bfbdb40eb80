"""What the hostile-member test holds and counts: cluster A's stolen credential and node keys (read from its
sim's journal, as an intruder on A's agent would), logins as A's agent or one of its nodes, each service's
refusal counters, and the table of attempts printed at the end."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from integration_support import WatchedConnection, connect_watched
from test_orchestrator_forgery import refused_total

from flotilla_client import runfile
from flotilla_contracts import permissions
from flotilla_contracts.subjects import Service
from flotilla_runtime import logins
from flotilla_runtime.bus import with_user
from flotilla_testkit import ConditionNotMet, eventually

MEMBER_FACING = (Service.REGISTRATION, Service.HEARTBEAT, Service.SCHEDULER, Service.UPGRADE_ORCHESTRATOR)


@dataclass(frozen=True)
class Stolen:
    """Everything cluster A's agent holds: its cluster id, credential and every node's key (seed)."""

    cluster_id: str
    credential: str
    seeds: dict[str, str]

    @classmethod
    def from_sim(cls, state: Path, prefix: str) -> Stolen:
        journal = state / f"sim-{prefix}" / f"{prefix}-journal.db"
        with sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=10) as db:
            [(cluster_id, credential)] = db.execute("SELECT cluster_id, credential FROM memberships").fetchall()
            seeds = dict(db.execute("SELECT node_id, seed FROM node_keys").fetchall())
        return cls(cluster_id, credential, seeds)


async def login_agent(url: str, stolen: Stolen) -> WatchedConnection:
    """A's cluster agent: `c.<A>` with A's credential."""
    return await connect_watched(with_user(url, permissions.cluster_user(stolen.cluster_id), stolen.credential))


async def login_node(url: str, stolen: Stolen, node: str, *, cluster_id: str = "", seed: str = "") -> WatchedConnection:
    """A node login `c.<cluster>.<node>` with A's credential and a node key (A's own key for `node` by default)."""
    user = permissions.cluster_user(cluster_id or stolen.cluster_id, node)
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await logins.connect(
        url, error_cb=on_error, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=10,
        nkeys_seed_str=seed or stolen.seeds[node], token=permissions.node_login_token(user, stolen.credential),
        inbox_prefix=permissions.inbox_prefix(user), pending_size=64 * 1024 * 1024,
    )  # fmt: skip
    return WatchedConnection(nc, errors)


def violations(connection: WatchedConnection, what: str = "") -> int:
    """Permissions violations the server reported on `connection` (naming `what`, when given)."""
    return sum(1 for e in connection.errors if "permissions violation" in e.lower() and what.lower() in e.lower())


async def all_denied(connection: WatchedConnection, what: str, sent: int, within_s: float = 30.0) -> int:
    """Wait until the server has denied `sent` attempts naming `what` (its errors arrive asynchronously)."""
    await settle(lambda: violations(connection, what) >= sent, within_s)
    return violations(connection, what)


async def settle(done: Callable[[], bool], within_s: float) -> None:
    """Wait until `done()` or `within_s` passed; the caller asserts what it needs (a shortfall is a finding)."""
    with contextlib.suppress(ConditionNotMet):
        await eventually(done, "what the caller asserts next", timeout_s=within_s)


class Refusals:
    """flotilla_member_refused_total of every member-facing service, read from each one's /metrics."""

    def __init__(self, state: Path) -> None:
        info = runfile.load(state)
        assert info is not None
        self.ports = {Service(s.name): s.http_port for s in info.services if Service(s.name) in MEMBER_FACING}

    async def totals(self) -> dict[Service, float]:
        return {service: sum((await refused_total(port)).values()) for service, port in self.ports.items()}

    async def by_reason(self, service: Service) -> dict[str, float]:
        return await refused_total(self.ports[service])


@dataclass
class Row:
    attempt: str
    sent: int = 0
    by_server: int = 0
    by_service: int = 0
    bounded: int = 0  # let through up to a bound (subscriptions under the server's per-connection bound)


@dataclass
class Table:
    """One row per attack; the services' refusals are the counters' growth while that attack ran."""

    refusals: Refusals
    rows: list[Row] = field(default_factory=list)

    async def attack(
        self, attempt: str, service: Service | None, run: Callable[[Row], Awaitable[None]], within_s: float = 60.0
    ) -> Row:
        """Run one attack; when a service is to refuse it, wait until its counter has grown by `row.sent`."""
        row = Row(attempt)
        before = await self.refusals.totals()
        await run(row)
        expected = row.sent - row.by_server
        if service is not None:
            refusing = service

            async def counted() -> bool:
                row.by_service = int((await self.refusals.totals())[refusing] - before[refusing])
                return row.by_service >= expected

            with contextlib.suppress(ConditionNotMet):  # a shortfall is a finding: the table shows it
                await eventually(counted, f"{refusing} to refuse {expected}", timeout_s=within_s, every_s=0.1)
        self.rows.append(row)
        return row

    def render(self) -> str:
        header = ("attempt", "sent", "refused by server", "refused by service", "within a bound")
        lines = [
            (r.attempt, f"{r.sent:,}", f"{r.by_server:,}", f"{r.by_service:,}", f"{r.bounded:,}") for r in self.rows
        ]
        widths = [max(len(str(x[i])) for x in [header, *lines]) for i in range(len(header))]
        return "\n".join(
            "  ".join(
                str(cell).ljust(w) if i == 0 else str(cell).rjust(w)
                for i, (cell, w) in enumerate(zip(x, widths, strict=True))
            )
            for x in [header, *lines]
        )
