"""Security events: a member sent something its identity may not say, and the hub refused it.

Refusals are counted per reason in each service's /metrics and reported here once per sender and window
(flotilla_runtime.trust), never per message, so a flooding member cannot flood FLEET_EVENTS with them.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import msgspec

from flotilla_contracts.envelope import Message
from flotilla_contracts.ids import ClusterIdField, Token
from flotilla_contracts.v1.common import ShortText, Text, Timestamp


class RefusalReason(StrEnum):
    """Why a member's message was refused. Values are stable: they are metric labels and event fields."""

    SUBJECT_BODY_MISMATCH = "subject_body_mismatch"  # the body names another cluster or node than the subject
    NOT_OWN_COMMAND = "not_own_command"  # a report answers no command sent to that very cluster and node
    UNKNOWN_NODE = "unknown_node"  # a node the cluster's inventory does not have
    NODE_QUOTA = "node_quota"  # over the cluster's maximum number of nodes
    RATE_LIMITED = "rate_limited"  # over the cluster's message rate
    WRONG_ROLE = "wrong_role"  # a node's identity speaking for the cluster agent, or the reverse
    MALFORMED = "malformed"  # not decodable, or over the size and depth bounds


class MemberRefused(Message, frozen=True, kw_only=True):
    """`service` refused messages from cluster `cluster_id` for `reason`: the first one in a window is
    described (`subject`, `detail`); `refused` counts every one of this reason since the previous event."""

    SCHEMA = "security.MemberRefused"

    service: Token
    cluster_id: ClusterIdField
    node: ShortText = ""
    reason: RefusalReason
    subject: Annotated[str, msgspec.Meta(max_length=1024)] = ""
    detail: Text = ""
    refused: Annotated[int, msgspec.Meta(ge=1)] = 1
    window_s: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    occurred_at: Timestamp
