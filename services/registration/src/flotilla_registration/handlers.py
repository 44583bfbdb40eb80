"""Registration's command handlers: each runs one use case in one transaction and returns its reply."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

from flotilla_contracts.errors import ErrorCode
from flotilla_contracts.subjects import Service
from flotilla_contracts.v1.registration import (
    ApproveClusterRequest,
    ClusterReply,
    ClusterState,
    CreateTokenReply,
    CreateTokenRequest,
    DeregisterClusterRequest,
    GetClusterRequest,
    JoinReply,
    JoinRequest,
    LabelClusterRequest,
    ListClustersReply,
    ListClustersRequest,
    ListNodesReply,
    ListNodesRequest,
    ListTokensReply,
    ListTokensRequest,
    RejectClusterRequest,
    ReportNodesReply,
    ReportNodesRequest,
    RevokeTokenReply,
    RevokeTokenRequest,
    SetHostKeysReply,
    SetHostKeysRequest,
    TaintClusterRequest,
)
from flotilla_kube.selectors import Selector, SelectorError, parse_selector
from flotilla_registration import clusters, inventory, joins, revocation, tokens
from flotilla_registration import store as repo
from flotilla_registration.cluster_cache import ClusterCache
from flotilla_runtime.commands import CommandContext, CommandRouter
from flotilla_runtime.errors import RequestError
from flotilla_runtime.store import Store, SyncTx
from flotilla_runtime.trust import RefusalLedger

T = TypeVar("T")


@dataclass
class Registration:
    """What the handlers share: the store, the credential key, the approval policy and a clock."""

    store: Store
    credential_key: bytes
    policy: Selector | None
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    # Kicks a deregistered cluster's open bus connections (None: they end when their grant expires).
    revoker: revocation.Revoker | None = None
    # Counts what members may not say or store (inventory.MemberRefusal) and reports it once per window.
    ledger: RefusalLedger = field(default_factory=lambda: RefusalLedger(Service.REGISTRATION.value))
    max_nodes_per_cluster: int = inventory.DEFAULT_MAX_NODES_PER_CLUSTER
    # Every cluster, decoded, kept current from the table's change log: `clusters.list` pages read it.
    cache: ClusterCache = field(init=False)

    def __post_init__(self) -> None:
        self.cache = ClusterCache(self.store)

    async def _write(self, work: Callable[[SyncTx], T]) -> T:
        """Run one use case."""
        try:
            return await self.store.run(work)
        except inventory.MemberRefusal as refusal:  # nothing of it was stored; count it, report it, answer it
            await self._refused(refusal)
            raise

    async def _refused(self, refusal: inventory.MemberRefusal) -> None:
        if not refusal.cluster_id:
            return  # not a member yet (a first join): the error reply is all
        event = self.ledger.refuse(refusal.cluster_id, refusal.reason, detail=refusal.message)
        if event is not None:
            subject = self.ledger.subject_for(event)
            await self.store.run(lambda tx: tx.emit(subject, event))

    def register(self, router: CommandRouter) -> None:
        router.add("tokens.create", CreateTokenRequest, CreateTokenReply, self.create_token)
        router.add("tokens.list", ListTokensRequest, ListTokensReply, self.list_tokens)
        router.add("tokens.revoke", RevokeTokenRequest, RevokeTokenReply, self.revoke_token)
        router.add("join", JoinRequest, JoinReply, self.join)
        router.add("nodes.report", ReportNodesRequest, ReportNodesReply, self.report_nodes)
        router.add("clusters.approve", ApproveClusterRequest, ClusterReply, self.approve)
        router.add("clusters.reject", RejectClusterRequest, ClusterReply, self.reject)
        router.add("clusters.get", GetClusterRequest, ClusterReply, self.get_cluster)
        router.add("clusters.label", LabelClusterRequest, ClusterReply, self.label)
        router.add("clusters.taint", TaintClusterRequest, ClusterReply, self.taint)
        router.add("clusters.deregister", DeregisterClusterRequest, ClusterReply, self.deregister)
        router.add("clusters.hostkeys.set", SetHostKeysRequest, SetHostKeysReply, self.set_host_keys)
        router.add("clusters.list", ListClustersRequest, ListClustersReply, self.list_clusters)
        router.add("nodes.list", ListNodesRequest, ListNodesReply, self.list_nodes)

    async def create_token(self, request: CreateTokenRequest, ctx: CommandContext) -> CreateTokenReply:
        now = self.clock()
        reply = await self._write(lambda tx: tokens.create(tx, request, now))
        ctx.log.info("join token created", extra={"token_id": reply.info.token_id})
        return reply

    async def list_tokens(self, request: ListTokensRequest, ctx: CommandContext) -> ListTokensReply:
        now = self.clock()
        return await self._write(lambda tx: tokens.list_tokens(tx, request, now))

    async def revoke_token(self, request: RevokeTokenRequest, ctx: CommandContext) -> RevokeTokenReply:
        now = self.clock()
        reply = await self._write(lambda tx: tokens.revoke(tx, request, now))
        ctx.log.info("join token revoked", extra={"token_id": request.token_id})
        return reply

    async def join(self, request: JoinRequest, ctx: CommandContext) -> JoinReply:
        join_ctx = joins.JoinContext(
            now=self.clock(),
            credential_key=self.credential_key,
            policy=self.policy,
            max_nodes=self.max_nodes_per_cluster,
        )
        reply = await self._write(lambda tx: joins.join(tx, request, join_ctx))
        ctx.log.bind(cluster=reply.cluster_id).info(
            "cluster %s", "re-joined" if reply.rejoined else "joined", extra={"state": reply.state.value}
        )
        return reply

    async def report_nodes(self, request: ReportNodesRequest, ctx: CommandContext) -> ReportNodesReply:
        now = self.clock()
        limit = self.max_nodes_per_cluster
        return await self._write(lambda tx: joins.report_nodes(tx, request, self.credential_key, now, limit))

    async def approve(self, request: ApproveClusterRequest, ctx: CommandContext) -> ClusterReply:
        now = self.clock()
        reply = await self._write(lambda tx: clusters.approve(tx, request.cluster_id, now))
        ctx.log.bind(cluster=request.cluster_id).info("cluster approved")
        return reply

    async def reject(self, request: RejectClusterRequest, ctx: CommandContext) -> ClusterReply:
        now = self.clock()
        reply = await self._write(lambda tx: clusters.reject(tx, request.cluster_id, request.reason, now))
        ctx.log.bind(cluster=request.cluster_id).info("cluster rejected", extra={"reason": request.reason})
        return reply

    async def get_cluster(self, request: GetClusterRequest, ctx: CommandContext) -> ClusterReply:
        return await self._write(lambda tx: clusters.get(tx, request.cluster_id))

    async def label(self, request: LabelClusterRequest, ctx: CommandContext) -> ClusterReply:
        now = self.clock()
        return await self._write(lambda tx: clusters.label(tx, request, now))

    async def taint(self, request: TaintClusterRequest, ctx: CommandContext) -> ClusterReply:
        now = self.clock()
        return await self._write(lambda tx: clusters.taint(tx, request, now))

    async def deregister(self, request: DeregisterClusterRequest, ctx: CommandContext) -> ClusterReply:
        now = self.clock()
        reply = await self._write(lambda tx: clusters.deregister(tx, request.cluster_id, request.reason, now))
        ctx.log.bind(cluster=request.cluster_id).info("cluster deregistered")
        await revocation.revoke(self.revoker, request.cluster_id)
        return reply

    async def set_host_keys(self, request: SetHostKeysRequest, ctx: CommandContext) -> SetHostKeysReply:
        now = self.clock()
        return await self._write(lambda tx: clusters.set_host_keys(tx, request, now))

    async def list_clusters(self, request: ListClustersRequest, ctx: CommandContext) -> ListClustersReply:
        selector = parse_request_selector(request.selector)
        states = request.states or [ClusterState.PENDING, ClusterState.APPROVED, ClusterState.REJECTED]
        chosen = clusters.select(await self.cache.all(), selector, states)
        after = _cursor(request.cursor)
        chosen_after = [c for c in chosen if (c.identity.name, c.cluster_id) > after] if after else chosen
        page = chosen_after[: request.limit]
        more = len(chosen_after) > request.limit
        next_cursor = f"{page[-1].identity.name}/{page[-1].cluster_id}" if more and page else ""
        return ListClustersReply(clusters=page, total=len(chosen), next_cursor=next_cursor)

    async def list_nodes(self, request: ListNodesRequest, ctx: CommandContext) -> ListNodesReply:
        after = _cursor(request.cursor) or ("", "")
        where, params = "(cluster_id, node_id) > (?, ?)", [after[0], after[1]]
        if request.cluster_id:
            if await self.store.fetchone("SELECT 1 FROM clusters WHERE cluster_id = ?", (request.cluster_id,)) is None:
                raise RequestError(ErrorCode.NOT_FOUND, f"no cluster {request.cluster_id}", field="cluster_id")
            where, params = where + " AND cluster_id = ?", [*params, request.cluster_id]
        total_where = "cluster_id = ?" if request.cluster_id else "1"
        total_row = await self.store.fetchone(
            f"SELECT COUNT(*) FROM nodes WHERE {total_where}", [request.cluster_id] if request.cluster_id else []
        )
        rows = await self.store.fetchall(
            f"SELECT info FROM nodes WHERE {where} ORDER BY cluster_id, node_id LIMIT ?", [*params, request.limit + 1]
        )
        nodes = [repo.decode_node(row) for row in rows]
        page, more = nodes[: request.limit], len(nodes) > request.limit
        next_cursor = f"{page[-1].cluster_id}/{page[-1].facts.node_id}" if more and page else ""
        return ListNodesReply(nodes=page, total=int(total_row[0]) if total_row else 0, next_cursor=next_cursor)


def parse_request_selector(text: str) -> Selector:
    try:
        return parse_selector(text)
    except SelectorError as exc:
        raise RequestError(ErrorCode.INVALID_SELECTOR, str(exc), field="selector") from None


def _cursor(cursor: str) -> tuple[str, str] | None:
    if not cursor:
        return None
    first, sep, second = cursor.partition("/")
    if not sep:
        raise RequestError(ErrorCode.INVALID_FIELD, "cursor is not one this service returned", field="cursor")
    return first, second
