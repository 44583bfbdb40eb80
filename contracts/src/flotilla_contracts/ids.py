"""Identifier types and the token rule every id on the bus must follow."""

from __future__ import annotations

import re
from typing import Annotated, NewType

import msgspec

# A NATS subject token: no dots, no spaces, no wildcards, nothing the server treats specially.
TOKEN_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"
_TOKEN_RE = re.compile(TOKEN_PATTERN)

Token = Annotated[str, msgspec.Meta(pattern=TOKEN_PATTERN, description="An id: 1-128 of A-Z a-z 0-9 _ -")]

ClusterId = NewType("ClusterId", str)
NodeName = NewType("NodeName", str)
TokenId = NewType("TokenId", str)
RolloutId = NewType("RolloutId", str)
SubscriptionName = NewType("SubscriptionName", str)
EventId = NewType("EventId", str)
MessageId = NewType("MessageId", str)

# Field types for Structs: validated as tokens by msgspec at decode time.
ClusterIdField = Annotated[str, msgspec.Meta(pattern=TOKEN_PATTERN, description="Cluster id (a token)")]
NodeNameField = Annotated[str, msgspec.Meta(pattern=TOKEN_PATTERN, description="Node name (a token)")]
RolloutIdField = Annotated[str, msgspec.Meta(pattern=TOKEN_PATTERN, description="Rollout id (a token)")]
TokenIdField = Annotated[str, msgspec.Meta(pattern=TOKEN_PATTERN, description="Join token id (a token)")]
SubscriptionNameField = Annotated[str, msgspec.Meta(pattern=TOKEN_PATTERN, description="Subscription name (a token)")]


class InvalidIdError(ValueError):
    """An id that cannot be a subject token; carries the field name for the error reply."""

    def __init__(self, field: str, value: str) -> None:
        super().__init__(
            f"{field} {value!r} is not a valid id: use 1-128 characters from A-Z a-z 0-9 _ - "
            "(no dots, spaces or wildcards)"
        )
        self.field = field
        self.value = value


def is_token(value: str) -> bool:
    """True when the value can stand as one subject token."""
    return bool(_TOKEN_RE.match(value))


def check_token(field: str, value: str) -> str:
    """Return the value when it is a valid token; raise InvalidIdError naming the field otherwise."""
    if not is_token(value):
        raise InvalidIdError(field, value)
    return value


# More id field types used by the v1 messages.
CommandIdField = Annotated[str, msgspec.Meta(pattern=TOKEN_PATTERN, description="Command id (a token)")]
RequestIdField = Annotated[
    str, msgspec.Meta(pattern=TOKEN_PATTERN, description="Client-chosen idempotency key (a token)")
]

# Agent commands for the cluster as a whole (applying workloads) go to this pseudo-node. A real node's
# token never starts with "_": Kubernetes node names start with a lower-case letter or digit.
CLUSTER_AGENT_NODE = "_cluster"

# A Kubernetes node name: an RFC 1123 DNS subdomain (lower-case alphanumerics, '-' and '.').
K8S_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_K8S_NAME_RE = re.compile(K8S_NAME_PATTERN)
_NODE_TOKEN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(_[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def node_token(node_name: str) -> str:
    """The subject token of a Kubernetes node name: dots become underscores (names never hold one).

    Raises InvalidIdError for a name that is not a Kubernetes node name or is longer than a token (128).
    """
    if len(node_name) > 128 or not _K8S_NAME_RE.match(node_name):
        raise InvalidIdError("node_name", node_name)
    return node_name.replace(".", "_")


def node_name_from_token(token: str) -> str:
    """The inverse of node_token: underscores become dots again; refuses the cluster pseudo-node."""
    if len(token) > 128 or not _NODE_TOKEN_RE.match(token):
        raise InvalidIdError("node", token)
    return token.replace("_", ".")
