"""Cutting a deregistered cluster off the bus at once: its open connections are kicked, not left to their grant.

The auth callout refuses a deregistered credential at the next connect, but a connection opened before keeps
its grant until it expires (`callout_grant_ttl_s`). So registration also holds a connection as
`registration-revoker`, a user of the server's system account allowed only to list connections
(`$SYS.REQ.SERVER.PING.CONNZ`, answered by every server of a NATS cluster) and to kick one
(`$SYS.REQ.SERVER.<id>.KICK`). Its agents then reconnect, are refused by the callout, and say so.

Best effort after the deregistration is committed: if registration stops between the two, the grant's
expiry is the backstop. Without a revoker URL only the backstop holds (logged at start).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import msgspec
import nats
import nats.errors
from nats.aio.client import Client

from flotilla_contracts import permissions
from flotilla_runtime.lifeline import Lifeline
from flotilla_runtime.natsconn import connect_options, redact

log = logging.getLogger("flotilla.registration.revocation")

CONNZ_LIMIT = 100_000  # connections listed per server in one answer


class _Conn(msgspec.Struct):
    cid: int
    authorized_user: str = ""


class _Connz(msgspec.Struct):
    server_id: str = ""
    connections: list[_Conn] = msgspec.field(default_factory=list)


class _ServerInfo(msgspec.Struct):
    id: str


class _ConnzReply(msgspec.Struct):
    server: _ServerInfo
    data: _Connz | None = None


@dataclass(frozen=True)
class Kicked:
    """What a revocation did: connections closed, and servers that answered the listing."""

    connections: int
    servers: int


class Revoker:
    """Kicks every open connection of a cluster (`c.<cluster>` and `c.<cluster>.<node>`) on every server."""

    def __init__(self, url: str, *, gather_s: float = 0.5, timeout_s: float = 5.0) -> None:
        self.url, self.gather_s, self.timeout_s = url, gather_s, timeout_s
        self.lifeline = Lifeline("registration-revoker")
        self._nc: Client | None = None
        self._lock = asyncio.Lock()

    async def _connection(self) -> Client:
        async with self._lock:
            if self._nc is None:
                self._nc = self.lifeline.attach(
                    await nats.connect(
                        self.url,
                        name="flotilla-registration-revoker",
                        connect_timeout=self.timeout_s,
                        **self.lifeline.options(),
                        **connect_options(self.url),
                    )
                )
            return self._nc

    async def kick_cluster(self, cluster_id: str) -> Kicked:
        """Close the cluster's connections on every server that answers within `gather_s`."""
        nc = await self._connection()
        inbox = nc.new_inbox()
        replies: list[_ConnzReply] = []

        async def collect(msg: object) -> None:
            with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                replies.append(msgspec.json.decode(msg.data, type=_ConnzReply))  # type: ignore[attr-defined]

        sub = await nc.subscribe(inbox, cb=collect)
        try:
            query = msgspec.json.encode({"auth": True, "limit": CONNZ_LIMIT, "acc": permissions.FLEET_ACCOUNT})
            await nc.publish(permissions.SERVERS_CONNZ_SUBJECT, query, reply=inbox)
            await nc.flush(timeout=int(self.timeout_s))
            await asyncio.sleep(self.gather_s)  # every server of a NATS cluster answers; none says it is the last
        finally:
            await sub.unsubscribe()
        kicked = 0
        for reply in replies:
            for conn in reply.data.connections if reply.data else []:
                if permissions.is_cluster_user_of(conn.authorized_user, cluster_id):
                    subject = permissions.kick_subject(reply.server.id)
                    await nc.request(subject, msgspec.json.encode({"cid": conn.cid}), timeout=self.timeout_s)
                    kicked += 1
        return Kicked(connections=kicked, servers=len(replies))

    async def close(self) -> None:
        if self._nc is not None:
            self.lifeline.stop()
            with contextlib.suppress(Exception):
                await self._nc.close()


async def revoke(revoker: Revoker | None, cluster_id: str) -> None:
    """Kick the cluster's connections, logging what happened; never raises (the grant's expiry is the backstop)."""
    if revoker is None:
        return
    try:
        kicked = await revoker.kick_cluster(cluster_id)
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        log.warning(
            "could not kick the connections of deregistered cluster %s (%s: %s) through %s; they end when "
            "their grant expires", cluster_id, type(exc).__name__, exc, redact(revoker.url),
            extra={"cluster": cluster_id},
        )  # fmt: skip
        return
    log.info(
        "kicked %d connection(s) of deregistered cluster %s on %d server(s)",
        kicked.connections, cluster_id, kicked.servers, extra={"cluster": cluster_id},
    )  # fmt: skip
