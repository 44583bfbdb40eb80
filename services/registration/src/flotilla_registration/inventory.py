"""What a cluster agent may put in the inventory: its own cluster's nodes, named consistently, up to a quota.

An inventory report (`nodes.report`) and a join carry the cluster credential in the body; the credential,
not the body's `cluster_id`, says who is speaking. A report is refused when the body names another cluster
than the credential's, when a node's id is not the subject token of its name (`ids.node_token`: the id is
what heartbeats and agent commands are addressed by, the name what Kubernetes knows it as, and the two must
not point at different nodes), or when the cluster would hold more nodes than the quota. A refusal is a
`MemberRefusal`: an error reply with a stable code that the handler also counts and reports (trust ledger).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flotilla_contracts.errors import ErrorCode
from flotilla_contracts.ids import InvalidIdError, node_token
from flotilla_contracts.v1.agent import NodeFacts
from flotilla_contracts.v1.security import RefusalReason
from flotilla_runtime.errors import RequestError

# Default quota of nodes per cluster: above the largest real clusters (Kubernetes supports 5,000 nodes).
DEFAULT_MAX_NODES_PER_CLUSTER = 5000
QUOTA_SETTING = "FLOTILLA_REGISTRATION_MAX_NODES_PER_CLUSTER"


class MemberRefusal(RequestError):
    """A request refused because of who sent it or what it would make us hold: answered like any RequestError
    and, when the sender cluster is known (`cluster_id`), counted by `reason` and reported once per window."""

    def __init__(self, cluster_id: str, reason: RefusalReason, code: ErrorCode, message: str, **details: Any) -> None:
        super().__init__(code, message, **details)
        self.cluster_id = cluster_id
        self.reason = reason


def check_speaker(credential_cluster: str, body_cluster: str) -> None:
    """The body's cluster must be the credential's."""
    if body_cluster != credential_cluster:
        raise MemberRefusal(
            credential_cluster,
            RefusalReason.SUBJECT_BODY_MISMATCH,
            ErrorCode.FORBIDDEN,
            f"this credential is for {credential_cluster}, not {body_cluster}; nothing was stored",
            field="cluster_id",
        )


def check_node_names(cluster_id: str, reported: Sequence[NodeFacts]) -> None:
    """Every node's id is the token of its own name (what a real agent sends: `ids.node_token(name)`)."""
    for index, facts in enumerate(reported):
        try:
            expected = node_token(facts.node_name)
        except InvalidIdError:
            expected = ""
        if facts.node_id != expected:
            raise MemberRefusal(
                cluster_id,
                RefusalReason.SUBJECT_BODY_MISMATCH,
                ErrorCode.INVALID_FIELD,
                f"nodes[{index}]: node id {facts.node_id!r} is not the token of its name {facts.node_name!r} "
                f"(expected {expected!r}); nothing was stored",
                field=f"nodes[{index}].node_id",
            )


def check_node_quota(cluster_id: str, count: int, limit: int) -> None:
    """A cluster may hold at most `limit` nodes; `count` is what it would hold after this request."""
    if count > limit:
        raise MemberRefusal(
            cluster_id,
            RefusalReason.NODE_QUOTA,
            ErrorCode.INVALID_FIELD,
            f"cluster {cluster_id or '(joining)'} would have {count} nodes, over the limit of {limit} per cluster; "
            f"nothing was stored. If the cluster really is that large, raise {QUOTA_SETTING}",
            field="nodes",
            limit=limit,
            nodes=count,
        )
