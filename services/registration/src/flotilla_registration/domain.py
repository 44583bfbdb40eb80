"""Registration's rules as pure functions: tokens, credentials, approval, label and taint edits, node diffs."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import msgspec

from flotilla_contracts.errors import ErrorCode
from flotilla_contracts.v1.agent import NodeFacts
from flotilla_contracts.v1.common import MAX_CLUSTER_LABELS, Taint
from flotilla_contracts.v1.registration import (
    ApprovalSource,
    ClusterInfo,
    ClusterState,
    JoinTokenInfo,
    TaintRef,
    TokenState,
)
from flotilla_kube.selectors import Selector
from flotilla_runtime.errors import RequestError

TOKEN_ID_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"
CREDENTIAL_PREFIX = "fc1"
# Facts that change all the time (reported by heartbeats instead): not an inventory change.
VOLATILE_NODE_FACTS = frozenset({"conditions", "pod_count"})


# --- join tokens -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewToken:
    token: str  # "<id>.<secret>", shown once
    secret_hash: str
    info: JoinTokenInfo


# The longest a join token may live: ten years. Longer is "never expires" (ttl_s null), and a date past year 9999
# does not exist.
MAX_TOKEN_TTL_S = 10 * 365 * 86400


def check_token_ttl(ttl_s: float | None) -> None:
    """Refuse a lifetime that no date can hold, naming the field and its range (`invalid_field`)."""
    if ttl_s is not None and ttl_s > MAX_TOKEN_TTL_S:
        raise RequestError(
            ErrorCode.INVALID_FIELD,
            f"ttl_s: {ttl_s:g} is out of range: a token lives more than 0 and at most {MAX_TOKEN_TTL_S} seconds "
            "(ten years); send null for a token that never expires",
            field="ttl_s",
            maximum=MAX_TOKEN_TTL_S,
        )


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_token(
    *,
    now: datetime,
    ttl_s: float | None,
    max_uses: int | None,
    auto_approve: bool,
    labels: Mapping[str, str],
    description: str,
) -> NewToken:
    """A kubeadm-style bootstrap token `abcdef.0123456789abcdef`: a public id and a 16-character secret."""
    token_id = "".join(secrets.choice(TOKEN_ID_CHARS) for _ in range(6))
    secret = "".join(secrets.choice(TOKEN_ID_CHARS) for _ in range(16))
    info = JoinTokenInfo(
        token_id=token_id,
        state=TokenState.ACTIVE,
        description=description,
        created_at=now,
        expires_at=now + timedelta(seconds=ttl_s) if ttl_s else None,
        max_uses=max_uses,
        auto_approve=auto_approve,
        labels=dict(labels),
    )
    return NewToken(token=f"{token_id}.{secret}", secret_hash=hash_secret(secret), info=info)


def token_state(info: JoinTokenInfo, now: datetime) -> TokenState:
    """Revoked wins over exhausted, exhausted over expired."""
    if info.revoked_at is not None:
        return TokenState.REVOKED
    if info.max_uses is not None and info.uses >= info.max_uses:
        return TokenState.EXHAUSTED
    if info.expires_at is not None and now >= info.expires_at:
        return TokenState.EXPIRED
    return TokenState.ACTIVE


def with_state(info: JoinTokenInfo, now: datetime) -> JoinTokenInfo:
    return msgspec.structs.replace(info, state=token_state(info, now))


def split_token(token: str) -> tuple[str, str]:
    """`abcdef.0123456789abcdef` -> (id, secret); TOKEN_INVALID for anything else."""
    token_id, sep, secret = token.partition(".")
    if not sep or len(token_id) != 6 or len(secret) != 16:
        raise RequestError(
            ErrorCode.TOKEN_INVALID,
            "join token is malformed: expected <6 characters>.<16 characters> as printed by `flotilla token create`",
            field="token",
        )
    return token_id, secret


def check_token(info: JoinTokenInfo | None, secret_hash: str, secret: str, now: datetime) -> JoinTokenInfo:
    """The token's info when it may be used now; otherwise a RequestError the agent can show as is."""
    if info is None or not hmac.compare_digest(secret_hash, hash_secret(secret)):
        raise RequestError(ErrorCode.TOKEN_INVALID, "join token is not known to this fleet", field="token")
    state = token_state(info, now)
    if state is TokenState.REVOKED:
        raise RequestError(
            ErrorCode.TOKEN_REVOKED, f"join token {info.token_id} was revoked; ask for a new one", field="token"
        )
    if state is TokenState.EXHAUSTED:
        raise RequestError(
            ErrorCode.TOKEN_EXHAUSTED,
            f"join token {info.token_id} was used {info.uses} of {info.max_uses} times; ask for a new one",
            field="token",
        )
    if state is TokenState.EXPIRED:
        raise RequestError(
            ErrorCode.TOKEN_EXPIRED,
            f"join token {info.token_id} expired at {info.expires_at:%Y-%m-%d %H:%M:%S}Z; ask for a new one",
            field="token",
        )
    return info


# --- cluster credentials -----------------------------------------------------------------------------------


def derive_credential(key: bytes, cluster_id: str, membership: int) -> str:
    """`fc1.<cluster id>.<hmac>`: recomputable (so a repeated join returns it again) and never stored."""
    mac = hmac.new(key, f"{cluster_id}:{membership}".encode(), hashlib.sha256).hexdigest()
    return f"{CREDENTIAL_PREFIX}.{cluster_id}.{mac}"


def credential_cluster(credential: str) -> str | None:
    """The cluster id a credential claims, or None when it is not a credential at all."""
    parts = credential.split(".")
    if len(parts) != 3 or parts[0] != CREDENTIAL_PREFIX:
        return None
    return parts[1]


def credential_matches(key: bytes, credential: str, cluster: ClusterInfo) -> bool:
    """The credential was issued for this cluster's current membership (whatever its state now)."""
    expected = derive_credential(key, cluster.cluster_id, cluster.membership)
    return hmac.compare_digest(expected, credential)


# --- joins and approval ------------------------------------------------------------------------------------


def new_cluster_id(name: str) -> str:
    """Readable and unique: the cluster name and six random hex digits."""
    return f"{name}-{secrets.token_hex(3)}"


def initial_labels(identity_labels: Mapping[str, str], token_labels: Mapping[str, str]) -> dict[str, str]:
    """What the cluster says about itself, then what the token's issuer decided (the issuer wins)."""
    labels = {**identity_labels, **token_labels}
    if len(labels) > MAX_CLUSTER_LABELS:
        raise RequestError(
            ErrorCode.INVALID_FIELD,
            f"{len(labels)} labels with the token's; a cluster may have at most {MAX_CLUSTER_LABELS}",
            field="identity.labels",
        )
    return labels


def initial_state(
    *, token_auto_approve: bool, policy: Selector | None, labels: Mapping[str, str]
) -> tuple[ClusterState, ApprovalSource | None]:
    """Approved at once by the token's flag or by the policy selector; Pending otherwise."""
    if token_auto_approve:
        return ClusterState.APPROVED, ApprovalSource.TOKEN
    if policy is not None and policy.matches(labels):
        return ClusterState.APPROVED, ApprovalSource.POLICY
    return ClusterState.PENDING, None


def join_reason(state: ClusterState, cluster: ClusterInfo) -> str:
    match state:
        case ClusterState.PENDING:
            return f"waiting for approval: `flotilla clusters approve {cluster.cluster_id}`"
        case ClusterState.REJECTED:
            return cluster.reason or "rejected"
        case _:
            return ""


def require_state(cluster: ClusterInfo, allowed: Iterable[ClusterState], action: str) -> None:
    """CONFLICT naming the current state when an action does not apply to it (e.g. a second approval)."""
    allowed = tuple(allowed)
    if cluster.state not in allowed:
        raise RequestError(
            ErrorCode.CONFLICT,
            f"cannot {action} cluster {cluster.cluster_id}: it is {cluster.state.value}"
            + (f"; only a {' or '.join(s.value for s in allowed)} cluster can be" if allowed else ""),
            cluster_id=cluster.cluster_id,
            state=cluster.state.value,
        )


# --- labels and taints -------------------------------------------------------------------------------------


def edit_labels(
    current: Mapping[str, str], set_labels: Mapping[str, str], remove_keys: Sequence[str]
) -> dict[str, str]:
    both = set(set_labels) & set(remove_keys)
    if both:
        raise RequestError(
            ErrorCode.INVALID_FIELD, f"label {sorted(both)[0]!r} is both set and removed", field="remove_keys"
        )
    result = {key: value for key, value in current.items() if key not in remove_keys}
    result.update(set_labels)
    if len(result) > MAX_CLUSTER_LABELS:
        raise RequestError(
            ErrorCode.INVALID_FIELD,
            f"the cluster would have {len(result)} labels; at most {MAX_CLUSTER_LABELS} are allowed",
            field="set_labels",
        )
    return result


def edit_taints(
    current: Sequence[Taint], add: Sequence[Taint], remove: Sequence[TaintRef], now: datetime
) -> tuple[list[Taint], list[Taint], list[Taint]]:
    """(result, added, removed): removals first; an added taint replaces one with the same key and effect."""

    def matches(ref: TaintRef, taint: Taint) -> bool:
        return taint.key == ref.key and (ref.effect is None or taint.effect is ref.effect)

    removed = [t for t in current if any(matches(ref, t) for ref in remove)]
    result = [t for t in current if t not in removed]
    added: list[Taint] = []
    for taint in add:
        replaced = [t for t in result if (t.key, t.effect) == (taint.key, taint.effect)]
        if replaced and replaced[0].value == taint.value:
            continue  # already there: not a change
        result = [t for t in result if t not in replaced]
        stamped = msgspec.structs.replace(taint, added_at=taint.added_at or now)
        result.append(stamped)
        added.append(stamped)
        removed.extend(replaced)
    if len(result) > 64:
        raise RequestError(ErrorCode.INVALID_FIELD, "a cluster may have at most 64 taints", field="add")
    return result, added, removed


# --- node inventory ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeDiff:
    added: list[NodeFacts]
    changed: list[tuple[NodeFacts, list[str]]]  # the new facts and the names of the fields that changed
    removed: list[NodeFacts]
    unchanged: list[NodeFacts]


def changed_fields(old: NodeFacts, new: NodeFacts) -> list[str]:
    before, after = msgspec.structs.asdict(old), msgspec.structs.asdict(new)
    return sorted(key for key in after if key not in VOLATILE_NODE_FACTS and before.get(key) != after[key])


def diff_nodes(
    known: Mapping[str, NodeFacts], reported: Sequence[NodeFacts], removed_ids: Sequence[str], complete: bool
) -> NodeDiff:
    """Compare a report with the inventory; `complete` means nodes not reported are gone."""
    duplicate = {n.node_id for n in reported if sum(1 for m in reported if m.node_id == n.node_id) > 1}
    if duplicate:
        raise RequestError(ErrorCode.INVALID_FIELD, f"node {sorted(duplicate)[0]} reported twice", field="nodes")
    added, changed, unchanged = [], [], []
    for facts in reported:
        old = known.get(facts.node_id)
        if old is None:
            added.append(facts)
        elif fields := changed_fields(old, facts):
            changed.append((facts, fields))
        else:
            unchanged.append(facts)
    reported_ids = {n.node_id for n in reported}
    gone = set(removed_ids) | (set(known) - reported_ids if complete else set())
    removed = [known[node_id] for node_id in sorted(gone) if node_id in known and node_id not in reported_ids]
    return NodeDiff(added, changed, removed, unchanged)
