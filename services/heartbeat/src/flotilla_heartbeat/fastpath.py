"""The usual heartbeat, cheaply: the same facts as the node's last one, only its `seq` and `sent_at` new.

A heartbeat is decoded in full (every field validated, ~4 µs) only when it may bring new facts. `body_key` is a
hash of the body with the values of `seq`, `sent_at` and the three ids cut out (Python's per-process keyed hash:
a sender cannot aim for a collision). `FactsCache` remembers which interned facts a key decoded to; when a node's
facts are already exactly those, the body can only repeat them, and only `Pulse` (ids, seq, sent_at) is decoded
and checked. Nothing is kept per node: nodes with the same facts share one entry. Cutting is done at the first
`"seq":`, `"sent_at":"`, `"cluster_id":"`, `"node_id":"` and `"node_name":"` of the body and only inside their
values: such a key can only open a JSON key (a quote inside a string is escaped), and if a first one belongs to
some other object the top-level value stays in the key, which then changes every time (the full decode, never a
wrong cheap one).
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from flotilla_contracts.v1.common import Timestamp
from flotilla_heartbeat.health_state import Facts

NO_KEY = -1  # Python's hash is never -1: a body that cannot be keyed (always decoded in full)
MAX_KEYS = 100_000  # distinct keys remembered; past it the cache starts again (it is only a cache)


class Pulse(msgspec.Struct):
    """What a repeated heartbeat brings: who it is for, checked by the caller, and seq and sent_at, validated."""

    cluster_id: str = ""
    node_id: str = ""
    seq: Annotated[int, msgspec.Meta(ge=0)] = 0
    sent_at: Timestamp | None = None


decode_pulse = msgspec.json.Decoder(Pulse).decode
_SEQ = b'"seq":'
_STRINGS = (b'"sent_at":"', b'"cluster_id":"', b'"node_id":"', b'"node_name":"')


def body_key(data: bytes) -> int:
    """Hash of `data` without the values of its first seq, sent_at and ids; NO_KEY when one is missing."""
    at = data.find(_SEQ)
    if at < 0:
        return NO_KEY
    at += len(_SEQ)
    comma, brace = data.find(b",", at), data.find(b"}", at)
    end = brace if comma < 0 or 0 <= brace < comma else comma
    if end < 0:
        return NO_KEY
    spans = [(at, end)]
    for key in _STRINGS:
        at = data.find(key)
        if at < 0:
            return NO_KEY
        at += len(key)
        end = data.find(b'"', at)
        if end < 0:
            return NO_KEY
        spans.append((at, end))
    spans.sort()
    pieces, done = [], 0
    for start, end in spans:
        if start < done:
            return NO_KEY  # overlapping values: not a body we can cut
        pieces.append(data[done:start])
        done = end
    pieces.append(data[done:])
    return hash(tuple(pieces))


class FactsCache:
    """Body key -> the interned facts that body decoded to (shared by every node that reports them)."""

    def __init__(self, limit: int = MAX_KEYS) -> None:
        self.limit = limit
        self._facts: dict[int, Facts] = {}

    def get(self, key: int) -> Facts | None:
        return self._facts.get(key)

    def remember(self, key: int, facts: Facts | None) -> None:
        if key == NO_KEY or facts is None:
            return
        if len(self._facts) >= self.limit:
            self._facts.clear()
        self._facts[key] = facts
