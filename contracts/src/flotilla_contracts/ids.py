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
