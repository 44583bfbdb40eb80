"""Registration commands and replies: join tokens, joins, approval, cluster and node inventory.

The lifecycle events registration publishes are in `registration_events`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import msgspec

from flotilla_contracts.envelope import Message
from flotilla_contracts.ids import ClusterIdField, NodeNameField, RequestIdField, TokenIdField
from flotilla_contracts.v1.agent import HostKey, NodeFacts
from flotilla_contracts.v1.common import (
    DEFAULT_PAGE,
    ClusterName,
    Cursor,
    KubeVersion,
    LabelKey,
    Labels,
    Limit,
    Selector,
    ShortText,
    Taint,
    TaintEffect,
    Text,
    Timestamp,
)

Secret = Annotated[str, msgspec.Meta(min_length=1, max_length=512, description="A secret; never logged")]
MAX_NODES_PER_MESSAGE = 5000

# --- join tokens ---------------------------------------------------------------------------------


class TokenState(StrEnum):
    """Whether a join token can still be used, and if not, why."""

    ACTIVE = "Active"
    EXPIRED = "Expired"
    REVOKED = "Revoked"
    EXHAUSTED = "Exhausted"


class JoinTokenInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A join token as listed: everything but the secret, which is stored hashed."""

    token_id: TokenIdField
    state: TokenState
    description: Text = ""
    created_at: Timestamp
    expires_at: Timestamp | None = None
    max_uses: Annotated[int, msgspec.Meta(ge=1)] | None = None
    uses: Annotated[int, msgspec.Meta(ge=0)] = 0
    auto_approve: bool = False
    labels: Labels = {}
    revoked_at: Timestamp | None = None


class CreateTokenRequest(Message, frozen=True, kw_only=True):
    """Create a join token; `ttl_s` null means it never expires, `max_uses` null means unlimited."""

    SCHEMA = "registration.CreateTokenRequest"

    ttl_s: Annotated[float, msgspec.Meta(gt=0)] | None = 86400.0
    max_uses: Annotated[int, msgspec.Meta(ge=1)] | None = None
    auto_approve: bool = False
    labels: Labels = {}
    description: Text = ""


class CreateTokenReply(Message, frozen=True, kw_only=True):
    """The new token: `token` is the secret, shown this once and never again."""

    SCHEMA = "registration.CreateTokenReply"

    token: Secret
    info: JoinTokenInfo


class ListTokensRequest(Message, frozen=True, kw_only=True):
    """List join tokens; only usable ones unless `include_inactive`."""

    SCHEMA = "registration.ListTokensRequest"

    include_inactive: bool = False


class ListTokensReply(Message, frozen=True, kw_only=True):
    """Join tokens, newest first."""

    SCHEMA = "registration.ListTokensReply"

    tokens: list[JoinTokenInfo] = []


class RevokeTokenRequest(Message, frozen=True, kw_only=True):
    """Revoke a join token; clusters that already joined with it are not affected."""

    SCHEMA = "registration.RevokeTokenRequest"

    token_id: TokenIdField


class RevokeTokenReply(Message, frozen=True, kw_only=True):
    """The revoked token."""

    SCHEMA = "registration.RevokeTokenReply"

    info: JoinTokenInfo


# --- joins -------------------------------------------------------------------------------------


class ClusterState(StrEnum):
    """Membership of a cluster in the fleet."""

    PENDING = "Pending"
    APPROVED = "Approved"
    REJECTED = "Rejected"
    DEREGISTERED = "Deregistered"


class ClusterIdentity(msgspec.Struct, frozen=True, kw_only=True):
    """What a cluster says about itself when it joins; `uid` is stable (the kube-system namespace UID)."""

    uid: Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9-]+$")]
    name: ClusterName
    labels: Labels = {}
    kubernetes_version: KubeVersion
    provider: ShortText = ""
    platform: ShortText = ""
    region: ShortText = ""
    zone: ShortText = ""


class JoinRequest(Message, frozen=True, kw_only=True):
    """A cluster agent asks to join with a token, or re-joins with its credential; repeats are safe."""

    SCHEMA = "registration.JoinRequest"

    request_id: RequestIdField
    token: Secret | None = None
    credential: Secret | None = None
    identity: ClusterIdentity
    nodes: Annotated[list[NodeFacts], msgspec.Meta(max_length=MAX_NODES_PER_MESSAGE)] = []
    agent_version: ShortText = ""


class JoinReply(Message, frozen=True, kw_only=True):
    """The cluster's id, its state and the credential its agents present from now on."""

    SCHEMA = "registration.JoinReply"

    cluster_id: ClusterIdField
    state: ClusterState
    credential: Secret | None = None
    reason: Text = ""
    rejoined: bool = False
    membership: Annotated[int, msgspec.Meta(ge=1, description="Counts memberships of this identity")] = 1


# --- clusters ----------------------------------------------------------------------------------


class ApprovalSource(StrEnum):
    """Who approved a cluster."""

    TOKEN = "token"
    POLICY = "policy"
    ADMIN = "admin"


class ClusterInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A cluster as registration knows it: identity, membership, labels and taints."""

    cluster_id: ClusterIdField
    identity: ClusterIdentity
    state: ClusterState
    membership: Annotated[int, msgspec.Meta(ge=1)] = 1
    labels: Labels = {}
    taints: Annotated[list[Taint], msgspec.Meta(max_length=64)] = []
    node_count: Annotated[int, msgspec.Meta(ge=0)] = 0
    token_id: TokenIdField | None = None
    approved_by: ApprovalSource | None = None
    reason: Text = ""
    agent_version: ShortText = ""
    joined_at: Timestamp
    approved_at: Timestamp | None = None
    updated_at: Timestamp
    deregistered_at: Timestamp | None = None


class NodeInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A node in registration's inventory, as last reported by its cluster's agents."""

    cluster_id: ClusterIdField
    facts: NodeFacts
    added_at: Timestamp
    updated_at: Timestamp


class ClusterReply(Message, frozen=True, kw_only=True):
    """One cluster after a command or a get; `nodes` is filled by `clusters.get` only."""

    SCHEMA = "registration.ClusterReply"

    cluster: ClusterInfo
    nodes: list[NodeInfo] = []


class ApproveClusterRequest(Message, frozen=True, kw_only=True):
    """Approve a Pending cluster."""

    SCHEMA = "registration.ApproveClusterRequest"

    cluster_id: ClusterIdField


class RejectClusterRequest(Message, frozen=True, kw_only=True):
    """Reject a Pending cluster, with a reason its agent shows."""

    SCHEMA = "registration.RejectClusterRequest"

    cluster_id: ClusterIdField
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]


class ListClustersRequest(Message, frozen=True, kw_only=True):
    """List clusters matching a label selector, one page at a time; no `states`: all but Deregistered."""

    SCHEMA = "registration.ListClustersRequest"

    selector: Selector = ""
    states: list[ClusterState] = []
    limit: Limit = DEFAULT_PAGE
    cursor: Cursor = ""


class ListClustersReply(Message, frozen=True, kw_only=True):
    """One page of clusters, by name; `next_cursor` empty on the last page."""

    SCHEMA = "registration.ListClustersReply"

    clusters: list[ClusterInfo] = []
    total: Annotated[int, msgspec.Meta(ge=0)] = 0
    next_cursor: Cursor = ""


class GetClusterRequest(Message, frozen=True, kw_only=True):
    """One cluster with its nodes."""

    SCHEMA = "registration.GetClusterRequest"

    cluster_id: ClusterIdField


class LabelClusterRequest(Message, frozen=True, kw_only=True):
    """Set some labels and remove others (`kubectl label` semantics: `k=v` sets, `k-` removes)."""

    SCHEMA = "registration.LabelClusterRequest"

    cluster_id: ClusterIdField
    set_labels: Labels = {}
    remove_keys: Annotated[list[LabelKey], msgspec.Meta(max_length=64)] = []


class TaintRef(msgspec.Struct, frozen=True, kw_only=True):
    """Names taints to remove: by key, and by effect when given."""

    key: LabelKey
    effect: TaintEffect | None = None


class TaintClusterRequest(Message, frozen=True, kw_only=True):
    """Add taints (replacing one with the same key and effect) and remove others."""

    SCHEMA = "registration.TaintClusterRequest"

    cluster_id: ClusterIdField
    add: Annotated[list[Taint], msgspec.Meta(max_length=64)] = []
    remove: Annotated[list[TaintRef], msgspec.Meta(max_length=64)] = []


class DeregisterClusterRequest(Message, frozen=True, kw_only=True):
    """Remove a cluster from the fleet; its credential stops working."""

    SCHEMA = "registration.DeregisterClusterRequest"

    cluster_id: ClusterIdField
    reason: Text = ""


class ListNodesRequest(Message, frozen=True, kw_only=True):
    """List nodes of one cluster, or of every cluster, one page at a time."""

    SCHEMA = "registration.ListNodesRequest"

    cluster_id: ClusterIdField | None = None
    limit: Limit = DEFAULT_PAGE
    cursor: Cursor = ""


class ListNodesReply(Message, frozen=True, kw_only=True):
    """One page of nodes, by cluster then node; `next_cursor` empty on the last page."""

    SCHEMA = "registration.ListNodesReply"

    nodes: list[NodeInfo] = []
    total: Annotated[int, msgspec.Meta(ge=0)] = 0
    next_cursor: Cursor = ""


class ReportNodesRequest(Message, frozen=True, kw_only=True):
    """An agent's node inventory report, made with its cluster credential (sent over request/reply so
    the credential is never stored in a stream). `complete`: every node of the cluster, others removed."""

    SCHEMA = "registration.ReportNodesRequest"

    cluster_id: ClusterIdField
    credential: Secret
    nodes: Annotated[list[NodeFacts], msgspec.Meta(max_length=MAX_NODES_PER_MESSAGE)] = []
    removed: Annotated[list[NodeNameField], msgspec.Meta(max_length=MAX_NODES_PER_MESSAGE)] = []
    complete: bool = False
    reported_at: Timestamp


class ReportNodesReply(Message, frozen=True, kw_only=True):
    """What the report changed in the inventory."""

    SCHEMA = "registration.ReportNodesReply"

    added: Annotated[int, msgspec.Meta(ge=0)] = 0
    changed: Annotated[int, msgspec.Meta(ge=0)] = 0
    removed: Annotated[int, msgspec.Meta(ge=0)] = 0


class SetHostKeysRequest(Message, frozen=True, kw_only=True):
    """Replace the SSH key set a cluster's agents keep in their managed `authorized_keys` block."""

    SCHEMA = "registration.SetHostKeysRequest"

    cluster_id: ClusterIdField
    keys: Annotated[list[HostKey], msgspec.Meta(max_length=256)] = []


class SetHostKeysReply(Message, frozen=True, kw_only=True):
    """The revision of the key set now published for the cluster."""

    SCHEMA = "registration.SetHostKeysReply"

    cluster_id: ClusterIdField
    revision: Annotated[int, msgspec.Meta(ge=1)]
    key_count: Annotated[int, msgspec.Meta(ge=0)] = 0
