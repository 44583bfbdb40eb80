"""The NATS auth callout: nats-server asks registration who a connecting agent is and what it may do.

Every connection that is not a static user (the services, `admin`) is sent by the server to
`$SYS.REQ.USER.AUTH`. We answer with a user JWT signed by the callout account key, carrying the
permissions of `flotilla_contracts.permissions`:

- `c.<cluster>` with the cluster's credential: the cluster agent of an Approved cluster gets its cluster's
  subjects only (permissions.cluster_grant); a Pending or Rejected one may only re-join (to learn its state);
  a deregistered, unknown or forged credential, or one for another cluster, is refused;
- `c.<cluster>.<node>` with the cluster's credential and the node's nkey (the server's nonce signed): a node in
  the cluster's inventory gets its own node's subjects only (permissions.node_grant). The first key that
  proves a node is bound to it (trust on first use); any other key for that node is refused until the node
  leaves the inventory or the cluster is deregistered (docs/security.md, "Per-node identity");
- `join.<nonce>` with a join token: the join command only; an unknown, revoked or expired token is
  refused (an exhausted one is let through: a repeated join with the same request id is answered with
  the credential it already got, and the join handler decides).

A request the server has stopped waiting for is not answered: the server sends it with `exp` = now + its
authorization timeout and refuses the client when that passes, so past it (a callout behind on a starved machine)
the answer would be thrown away, and its database read and two signatures would only make the requests behind it
later still (`too_late`). That rests on registration's clock agreeing with the server's to within a second, as
the grants' expiry already does.

A grant expires after `ttl_s` (less up to a fifth, drawn per grant, so grants issued together do not expire
together); the client then reconnects and is asked about again (flotilla_runtime.lifeline). Deregistering a
cluster also kicks its open connections at once (revocation.py); the expiry is the backstop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from flotilla_contracts import permissions
from flotilla_contracts.errors import ErrorCode
from flotilla_contracts.ids import CLUSTER_AGENT_NODE
from flotilla_contracts.permissions import FLEET_ACCOUNT, Grant
from flotilla_contracts.v1.registration import ClusterState
from flotilla_registration import domain, joins, natsjwt, natskeys
from flotilla_registration import store as repo
from flotilla_runtime.errors import RequestError
from flotilla_runtime.store import Store, SyncTx

log = logging.getLogger("flotilla.registration.callout")
NO_LIMITS = natsjwt.UserLimits()


@dataclass(frozen=True)
class Verdict:
    """A grant for `user`, or the reason it is refused (shown in the server's log and to the client)."""

    user: str
    grant: Grant | None
    reason: str = ""
    cluster_id: str = ""


@dataclass(frozen=True)
class Login:
    """Who a connection says it is: user and password, or for a node its key (`nkey`, and whether it signed the
    server's nonce with it: `proven`)."""

    user: str
    password: str
    nkey: str = ""
    proven: bool = False

    @classmethod
    def of(cls, opts: natsjwt.ConnectOpts, nonce: str) -> Login:
        """From the CONNECT options: a node sends its nkey, the nonce signature and `<user> <credential>` as token."""
        if not opts.nkey:
            return cls(opts.user, opts.password)
        user, credential = permissions.parse_node_login_token(opts.auth_token)
        return cls(user, credential, opts.nkey, natskeys.verify_nonce_signature(opts.nkey, nonce, opts.sig))


def decide(tx: SyncTx, login: Login, key: bytes, now: datetime) -> Verdict:
    """Who `login` is and what it may do, from registration's own state (binding a node's key on its first login)."""
    user = login.user
    parsed = permissions.parse_agent_user(user)
    if parsed is None:
        return Verdict(user, None, f"unknown user {user!r}: an agent connects as c.<cluster> with its "
                       "credential, or as join.<nonce> with a join token")  # fmt: skip
    kind, ident, node = parsed
    try:
        if kind == "join":
            return _join(tx, user, ident, login.password, now)
        return _cluster(tx, login, ident, node, key)
    except RequestError as exc:
        return Verdict(user, None, exc.message, ident if kind == "cluster" else "")


def _join(tx: SyncTx, user: str, nonce: str, token: str, now: datetime) -> Verdict:
    token_id, secret = domain.split_token(token)
    found = repo.get_token(tx, token_id)
    try:
        domain.check_token(found[0] if found else None, found[1] if found else "", secret, now)
    except RequestError as exc:
        if exc.code is not ErrorCode.TOKEN_EXHAUSTED:
            raise
    return Verdict(user, permissions.join_grant(nonce))


def _cluster(tx: SyncTx, login: Login, cluster_id: str, node: str, key: bytes) -> Verdict:
    user = login.user
    cluster = joins.authenticate(tx, login.password, key)
    if cluster.cluster_id != cluster_id:
        return Verdict(user, None, f"this credential is for cluster {cluster.cluster_id}, not {cluster_id}", cluster_id)
    if cluster.state is not ClusterState.APPROVED:
        if node:
            reason = f"cluster {cluster_id} is {cluster.state.value}: its nodes log in once it is approved"
            return Verdict(user, None, reason, cluster_id)
        return Verdict(user, permissions.pending_grant(cluster_id), cluster_id=cluster_id)
    if not node:
        return Verdict(user, permissions.cluster_grant(cluster_id), cluster_id=cluster_id)
    return _node(tx, login, cluster_id, node)


def _node(tx: SyncTx, login: Login, cluster_id: str, node: str) -> Verdict:
    """A node of an approved cluster: in its inventory, and holding the key bound to it (bound now if none is)."""
    user, where = login.user, f"node {cluster_id}/{node}"
    if node == CLUSTER_AGENT_NODE or not repo.has_node(tx, cluster_id, node):
        return Verdict(user, None, f"{where} is not in the cluster's inventory: the cluster agent reports its "
                       "nodes (join, nodes.report) and the node may log in after that", cluster_id)  # fmt: skip
    if not login.nkey:
        return Verdict(user, None, f"{where} did not present a node key: a node logs in with its nkey, signing "
                       "the server's nonce (flotilla_node_agent.nodekey)", cluster_id)  # fmt: skip
    if not login.proven:
        return Verdict(user, None, f"{where}: the signature of the server's nonce does not verify with the "
                       f"presented key {login.nkey}", cluster_id)  # fmt: skip
    bound = repo.node_key(tx, cluster_id, node)
    if bound is None:
        repo.bind_node_key(tx, cluster_id, node, login.nkey)
        extra = {"cluster": cluster_id, "node": node, "nkey": login.nkey}
        log.info("bound a node to the key of its first login", extra=extra)
    elif bound != login.nkey:
        return Verdict(user, None, f"{where} is bound to key {bound}, not {login.nkey}: another agent already "
                       "proved this node; if the node was rebuilt, remove it from the cluster (its binding goes "
                       "with it) or deregister the cluster", cluster_id)  # fmt: skip
    return Verdict(user, permissions.node_grant(cluster_id, node), cluster_id=cluster_id)


def grant_lifetime(ttl_s: int, rand: float) -> int:
    """A grant's lifetime: `ttl_s` less up to a fifth, drawn per grant, so the connections a server restart
    opened together do not all expire, and come back to the callout, in the same second (a tenth was not enough
    for a 100,000-node fleet that logged in within 20 minutes: its renewals came as a wave, docs/scale.md)."""
    return max(1, round(ttl_s * (1.0 - 0.2 * rand)))


def user_permissions(grant: Grant, ttl_s: int, limits: natsjwt.UserLimits = NO_LIMITS) -> natsjwt.UserPermissions:
    """The JWT's permissions for `grant`, and the member limits it carries (subscriptions held, bytes per
    message; see natsjwt.UserLimits for when nats-server enforces them)."""
    responses = natsjwt.ResponsePermission(max=1000, ttl=ttl_s * 1_000_000_000) if grant.responses else None
    return natsjwt.UserPermissions(
        pub=natsjwt.Permission(allow=list(grant.publish)),
        sub=natsjwt.Permission(allow=list(grant.subscribe)),
        resp=responses,
        limits=limits,
    )


class _Expiry(msgspec.Struct):
    exp: int = 0


def request_expiry(data: bytes) -> int:
    """The `exp` of an authorization request (Unix seconds: when the server stops waiting), 0 if unreadable.

    Read before the signature is checked: it only ever decides not to answer, never what to grant."""
    parts = data.split(b".")
    if len(parts) != 3:
        return 0
    try:
        return msgspec.json.decode(base64.urlsafe_b64decode(parts[1] + b"=" * (-len(parts[1]) % 4)), type=_Expiry).exp
    except (binascii.Error, ValueError, msgspec.DecodeError):
        return 0


def too_late(expiry: int, now: float) -> bool:
    """Pure: the server has certainly stopped waiting for this answer. `exp` is the server's deadline rounded
    down to the second, so only a second past it is sure; 0 (no deadline read) is never late."""
    return expiry > 0 and now >= expiry + 1


LATE_LOG_EVERY_S = 60.0


@dataclass
class CalloutStats:
    granted: int = 0
    refused: int = 0
    malformed: int = 0
    late: int = 0  # requests the server had stopped waiting for: not answered


class AuthCallout:
    """Answers the server's authorization requests; one subscription in the `registration` queue group."""

    def __init__(
        self,
        store: Store,
        credential_key: bytes,
        issuer_seed: str,
        *,
        ttl_s: int = 600,
        limits: natsjwt.UserLimits = NO_LIMITS,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        rand: Callable[[], float] = random.random,
        max_in_flight: int = 256,
    ) -> None:
        self.store, self.key, self.seed, self.ttl_s, self.clock = store, credential_key, issuer_seed, ttl_s, clock
        self.rand = rand
        self.limits = limits
        self.issuer = natskeys.public_key(issuer_seed)
        self.stats = CalloutStats()
        # nats-py awaits one subscription's callbacks one after another, and nats-server holds every connecting
        # client until its answer: answered in line, a fleet connecting at once waited 2-2.7 s per CONNECT (1,000
        # clusters x 10 nodes, an idle machine). So each answer runs on its own (their database reads
        # group-commit), at most `max_in_flight` at once; past that the subscription waits (back-pressure).
        self._slots = asyncio.Semaphore(max_in_flight)
        self._answering: set[asyncio.Task[None]] = set()
        self._late_logged_at = -LATE_LOG_EVERY_S

    async def serve(self, nc: Client) -> Any:
        return await nc.subscribe(permissions.AUTH_CALLOUT_SUBJECT, queue="registration", cb=self.on_request)

    async def on_request(self, msg: Msg) -> None:
        """Take the request and answer it on its own task (see __init__); returns once it is under way."""
        await self._slots.acquire()
        task = asyncio.create_task(self._answer(msg), name="auth-callout")
        self._answering.add(task)
        task.add_done_callback(self._answered)

    def _answered(self, task: asyncio.Task[None]) -> None:
        self._answering.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("an authorization request was not answered: %r", task.exception())

    async def drain(self) -> None:
        """Until every request taken has been answered (tests, shutdown)."""
        while self._answering:
            await asyncio.gather(*self._answering, return_exceptions=True)

    async def _answer(self, msg: Msg) -> None:
        expiry = request_expiry(msg.data)
        if self._late(expiry):
            return
        try:
            request = natsjwt.decode_request(msg.data)
        except natsjwt.CalloutError as exc:
            self.stats.malformed += 1
            log.error("ignoring a malformed authorization request: %s", exc)
            return  # the server times the connection out: nothing to answer to
        now = self.clock()
        login = Login.of(request.connect_opts, request.client_info.nonce)
        verdict = await self.store.run(lambda tx: decide(tx, login, self.key, now))
        if self._late(expiry):  # the read waited its turn: signing the answer would be spent for nothing
            return
        await msg.respond(self.answer(request, verdict).encode())

    def _late(self, expiry: int) -> bool:
        """True (counted, logged once a minute) when the server has stopped waiting for this request's answer."""
        if not too_late(expiry, self.clock().timestamp()):
            return False
        self.stats.late += 1
        now = time.monotonic()
        if now - self._late_logged_at >= LATE_LOG_EVERY_S:
            self._late_logged_at = now
            log.warning("authorization requests reach the callout after the server stopped waiting for them (%d so "
                        "far): not answering those; their clients are refused and log in again with back-off",
                        self.stats.late)  # fmt: skip
        return True

    def answer(self, request: natsjwt.AuthRequest, verdict: Verdict) -> str:
        extra = {"user": verdict.user, "cluster": verdict.cluster_id, "client": request.client_info.host}
        if verdict.grant is None:
            self.stats.refused += 1
            log.warning("refused a bus connection: %s", verdict.reason, extra=extra)
            return natsjwt.response_jwt(
                self.seed, user_nkey=request.user_nkey, server_id=request.server_id.id, error=verdict.reason
            )
        self.stats.granted += 1
        log.debug("granted a bus connection", extra=extra)
        user = natsjwt.user_jwt(
            self.seed,
            user_nkey=request.user_nkey,
            account=FLEET_ACCOUNT,
            name=verdict.user,
            permissions=user_permissions(verdict.grant, self.ttl_s, self.limits),
            expires_in_s=grant_lifetime(self.ttl_s, self.rand()),
        )
        return natsjwt.response_jwt(
            self.seed, user_nkey=request.user_nkey, server_id=request.server_id.id, user_jwt=user
        )


async def run(callout: AuthCallout, nc: Client) -> None:
    """Serve until cancelled (the subscription survives reconnects: nats-py re-subscribes)."""
    sub = await callout.serve(nc)
    try:
        await asyncio.Event().wait()
    finally:
        await sub.unsubscribe()
        await callout.drain()
