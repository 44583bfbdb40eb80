"""The usual heartbeat, cheaply: the same facts as the node's last one, only its `seq` and `sent_at` new.

A heartbeat is decoded in full (every field validated, ~4 µs) only when its body differs from the node's last
fully decoded one in more than the values of `seq` and `sent_at`. `body_key` is a hash of the body with those
two values cut out (Python's per-process keyed hash: a sender cannot aim for a collision); when it equals the
key the node kept, the facts are the ones already validated and kept, and only `Pulse` (node, seq, sent_at)
is decoded and checked. Cutting is done on the first `"seq":` and `"sent_at":"` of the body: such a key can
only open a JSON key (a quote inside a string is escaped), and if a first one belongs to some other object the
top-level value stays in the key, which then changes every time: the full decode, never a wrong fast one.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from flotilla_contracts.v1.common import Timestamp

NO_KEY = -1  # Python's hash is never -1: a node that has no key yet


class Pulse(msgspec.Struct):
    """What changes from one heartbeat of a node to the next, checked as the full decode would."""

    node_id: str = ""
    seq: Annotated[int, msgspec.Meta(ge=0)] = 0
    sent_at: Timestamp | None = None


decode_pulse = msgspec.json.Decoder(Pulse).decode
_SEQ = b'"seq":'
_SENT_AT = b'"sent_at":"'


def body_key(data: bytes) -> int:
    """Hash of `data` without the values of its first `seq` and `sent_at`; NO_KEY when either is missing."""
    i = data.find(_SEQ)
    k = data.find(_SENT_AT)
    if i < 0 or k < 0:
        return NO_KEY
    i += len(_SEQ)
    j = data.find(b",", i)
    end = data.find(b"}", i)
    j = end if j < 0 or 0 <= end < j else j
    k += len(_SENT_AT)
    q = data.find(b'"', k)
    if j < 0 or q < 0:
        return NO_KEY
    if i < k:
        return hash((data[:i], data[j:k], data[q:])) if j <= k else NO_KEY
    return hash((data[:k], data[q:i], data[j:])) if q <= i else NO_KEY
