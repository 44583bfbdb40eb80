"""The cluster agent: one per cluster, it joins the fleet, waits for approval and reports the nodes.

It joins with the join token from its settings (`fleet.v1.cmd.registration.join`), keeps the credential
in the journal, re-joins with the credential until the cluster is Approved, then reports every node's
facts at start and whenever they change (`nodes.report`). The node agents of the cluster wait on the
`ClusterHandle` for the cluster id before they heartbeat or take commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Protocol

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext

from flotilla_contracts import catalogue, permissions
from flotilla_contracts.envelope import H_SCHEMA, Message, schema_id
from flotilla_contracts.v1.agent import NodeFacts
from flotilla_contracts.v1.registration import (
    ClusterIdentity,
    ClusterState,
    JoinReply,
    JoinRequest,
    ReportNodesReply,
    ReportNodesRequest,
)
from flotilla_node_agent import __version__
from flotilla_node_agent.journal import Journal, Membership
from flotilla_runtime import codec
from flotilla_runtime.logs import BoundLogger
from flotilla_runtime.replyby import reply_by_headers
from flotilla_runtime.store import Store

NodesSource = Callable[[], Awaitable[list[NodeFacts]]]
# Opens a NATS connection as (user, password); see flotilla_contracts.permissions for the user names.
Connector = Callable[[str, str], Awaitable[Client]]
M = type[Message]


class ClusterHandle:
    """The cluster id once the cluster is an approved member, and the cluster's own connection when it
    has one (an authenticated bus: the agents of a cluster speak as that cluster); shared by its agents."""

    def __init__(self, cluster_id: str = "") -> None:
        self.cluster_id = cluster_id
        self.nc: Client | None = None
        self.approved = asyncio.Event()
        if cluster_id:
            self.approved.set()

    def approve(self, cluster_id: str, nc: Client | None = None) -> None:
        self.cluster_id = cluster_id
        self.nc = nc
        self.approved.set()

    async def wait(self) -> str:
        await self.approved.wait()
        return self.cluster_id


class WorkloadApplier(Protocol):
    """EXTENSION POINT for the scheduler issue: the cluster agent applies placed workloads.

    Placements arrive on `fleet.v1.agent.<cluster>._cluster.apply` (`scheduler.ApplyManifests`); they wait
    in the FLEET_AGENT work queue until the implementation (flotilla_node_agent.applier) creates the
    cluster's consumer and reads it, woken by them over `nc` (flotilla_runtime.agent_inbox).
    """

    async def run(self, cluster_id: str, nc: Client, js: JetStreamContext | None = None) -> None: ...


REPORT_BACKOFF_MAX_S = 120.0


def report_wait(every_s: float, failures: int, rand: float) -> float:
    """Seconds until the next node report: `every_s`, or after failures (registration behind, the bus busy) a
    doubling wait up to REPORT_BACKOFF_MAX_S with full jitter, so a fleet whose reports timed out together does
    not send them again together."""
    if failures <= 0:
        return every_s
    return every_s + min(every_s * 2.0 ** min(failures, 16), REPORT_BACKOFF_MAX_S) * rand


JOIN_BACKOFF_FIRST_S = 5.0
JOIN_BACKOFF_MAX_S = 60.0


def join_wait(pending_delay_s: float, failures: int, rand: float) -> float:
    """Seconds until the next join: `pending_delay_s` while registration answers (pending approval), or after
    failures in a row (no answer, the bus busy) a doubling ceiling from JOIN_BACKOFF_FIRST_S to JOIN_BACKOFF_MAX_S
    with full jitter. Every cluster agent re-joins when its process starts: at 10,000 x 10, sims restarting at once
    retried every 10 s in step and kept registration behind (docs/scale.md)."""
    if failures <= 0:
        return pending_delay_s
    return min(JOIN_BACKOFF_FIRST_S * 2.0 ** min(failures - 1, 16), JOIN_BACKOFF_MAX_S) * rand


class JoinRefused(Exception):
    """Registration said no (rejected, deregistered, bad token): the reason is in the message."""


class ClusterAgent:
    def __init__(
        self,
        nc: Client | None,
        store: Store,
        journal: Journal,
        identity: ClusterIdentity,
        token: str,
        nodes: NodesSource,
        handle: ClusterHandle,
        log: BoundLogger,
        *,
        report_every_s: float = 10.0,
        request_timeout_s: float = 5.0,
        connector: Connector | None = None,
    ) -> None:
        self.nc, self.store, self.journal = nc, store, journal
        self.identity, self.token, self.nodes, self.handle, self.log = identity, token, nodes, handle, log
        self.report_every_s = report_every_s
        self.request_timeout_s = request_timeout_s
        # With a connector the agent speaks as its cluster: it joins on a connection authenticated by the
        # join token, then uses one authenticated by the credential (the bus grants that one its own
        # cluster's subjects once approved). Without one, it shares `nc` (an open bus, or tests).
        self.connector = connector
        self.granted_approved = False  # the current connection was opened after approval
        self.workloads: WorkloadApplier | None = None
        self.workloads_task: asyncio.Task[None] | None = None  # held: the loop keeps only weak references
        self.credential: str | None = None
        self.last_report = b""
        self.reports_sent = 0

    async def _request(self, message: Message, reply_type: M) -> object:
        subject = catalogue.subject_for(type(message))
        if self.nc is None:
            raise nats.errors.ConnectionClosedError
        headers = {H_SCHEMA: schema_id(type(message)), **reply_by_headers(self.request_timeout_s)}
        reply = await self.nc.request(subject, codec.encode(message), timeout=self.request_timeout_s, headers=headers)
        decoded = codec.decode_reply(reply.data, reply_type)
        if not decoded.ok or decoded.data is None:
            error = decoded.error
            raise JoinRefused(f"{error.code}: {error.message}" if error else "registration answered without data")
        return decoded.data

    async def join_once(self, attempt: int) -> JoinReply:
        """One join: with the token the first time, with the credential afterwards (safe to repeat)."""
        request_id = f"join-{self.identity.uid}"[:100] if self.credential is None else f"rejoin-{uuid.uuid4().hex}"
        request = JoinRequest(
            request_id=request_id,
            token=None if self.credential else self.token,
            credential=self.credential,
            identity=self.identity,
            nodes=await self.nodes(),
            agent_version=__version__,
        )
        reply = await self._request(request, JoinReply)
        assert isinstance(reply, JoinReply)
        if reply.credential:
            self.credential = reply.credential
        await self.journal.save_membership(
            self.store,
            Membership(self.identity.uid, reply.cluster_id, reply.credential, reply.state.value, reply.reason),
        )
        return reply

    async def _reconnect(self, user: str, password: str, *, approved: bool) -> None:
        """Swap to a connection as `user` (the bus decides its permissions when it opens)."""
        assert self.connector is not None
        old, self.nc = self.nc, await self.connector(user, password)
        self.granted_approved = approved
        if old is not None and old is not self.nc:
            with contextlib.suppress(Exception):
                await old.drain()

    async def _connect_for(self, cluster_id: str, *, approved: bool) -> None:
        """Open the connection this phase needs, when the current one is not it."""
        if self.connector is None:
            return
        if self.credential and cluster_id:
            if (approved and not self.granted_approved) or self.nc is None or self.nc.is_closed:
                await self._reconnect(permissions.cluster_user(cluster_id), self.credential, approved=approved)
        elif self.nc is None or self.nc.is_closed:
            await self._reconnect(permissions.join_user(uuid.uuid4().hex), self.token, approved=False)

    async def join(self) -> str:
        """Join, then wait for approval (re-joining with the credential, backing off to 10 s while pending, and
        with full jitter up to a minute while nothing answers)."""
        saved = await self.journal.membership(self.store, self.identity.uid)
        cluster_id = ""
        if saved is not None and saved.credential:
            self.credential, cluster_id = saved.credential, saved.cluster_id
        delay, attempt, failures = 0.5, 0, 0
        while True:
            attempt += 1
            try:
                await self._connect_for(cluster_id, approved=False)
                reply = await self.join_once(attempt)
                cluster_id = reply.cluster_id
                if reply.state is ClusterState.APPROVED:
                    await self._connect_for(cluster_id, approved=True)
            except (nats.errors.Error, TimeoutError, OSError) as exc:
                failures += 1
                wait = join_wait(delay, failures, random.random())
                self.log.warning(
                    "registration did not answer the join, or the bus refused the connection (%s: %s); "
                    "retrying in %.1fs", type(exc).__name__, exc, wait,
                )  # fmt: skip
                await asyncio.sleep(wait)  # sleep: the back-off itself
                continue
            else:
                if reply.state is ClusterState.APPROVED:
                    self.log.info("cluster %s approved", reply.cluster_id, extra={"cluster": reply.cluster_id})
                    self.handle.approve(reply.cluster_id, self.nc if self.connector else None)
                    return reply.cluster_id
                if reply.state in (ClusterState.REJECTED, ClusterState.DEREGISTERED):
                    raise JoinRefused(f"cluster {reply.cluster_id} is {reply.state.value}: {reply.reason}")
                if attempt == 1:
                    self.log.info("cluster %s is pending approval", reply.cluster_id)
            failures = 0
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def report_if_changed(self) -> bool:
        facts = sorted(await self.nodes(), key=lambda f: f.node_id)
        digest = hashlib.sha256(msgspec.json.encode(facts)).digest()
        if digest == self.last_report or self.credential is None:
            return False
        request = ReportNodesRequest(
            cluster_id=self.handle.cluster_id,
            credential=self.credential,
            nodes=facts,
            complete=True,
            reported_at=datetime.now(UTC),
        )
        await self._request(request, ReportNodesReply)
        self.last_report, self.reports_sent = digest, self.reports_sent + 1
        return True

    async def run(self) -> None:
        try:
            cluster_id = await self.join()
        except JoinRefused as exc:
            self.log.error("cannot join the fleet: %s", exc)
            return
        if self.workloads is not None:
            if self.nc is None:
                raise RuntimeError(f"cluster {cluster_id} joined without a connection")
            js = self.nc.jetstream() if self.connector is not None else None
            self.workloads_task = asyncio.get_running_loop().create_task(self.workloads.run(cluster_id, self.nc, js))
        try:
            failures = 0
            while True:
                try:
                    await self.report_if_changed()
                    failures = 0
                except (nats.errors.Error, TimeoutError, JoinRefused) as exc:
                    failures += 1
                    self.log.warning("node report not accepted (%s); will retry", exc)
                await asyncio.sleep(  # sleep: the report interval, longer after failures (report_wait)
                    report_wait(self.report_every_s, failures, random.random())
                )
        finally:
            if self.workloads_task is not None:
                self.workloads_task.cancel()
