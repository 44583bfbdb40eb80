"""Join token use cases: create (the secret shown once, stored hashed), list, revoke."""

from __future__ import annotations

from datetime import datetime

import msgspec

from flotilla_contracts.catalogue import subject_for
from flotilla_contracts.errors import ErrorCode
from flotilla_contracts.v1.registration import (
    CreateTokenReply,
    CreateTokenRequest,
    ListTokensReply,
    ListTokensRequest,
    RevokeTokenReply,
    RevokeTokenRequest,
    TokenState,
)
from flotilla_contracts.v1.registration_events import TokenCreated, TokenRevoked
from flotilla_registration import domain
from flotilla_registration import store as repo
from flotilla_runtime.errors import RequestError
from flotilla_runtime.store import SyncTx


def create(tx: SyncTx, request: CreateTokenRequest, now: datetime) -> CreateTokenReply:
    domain.check_token_ttl(request.ttl_s)
    new = domain.new_token(
        now=now,
        ttl_s=request.ttl_s,
        max_uses=request.max_uses,
        auto_approve=request.auto_approve,
        labels=request.labels,
        description=request.description,
    )
    while repo.get_token(tx, new.info.token_id) is not None:  # 36^6 ids: a clash is rare but possible
        new = domain.new_token(
            now=now,
            ttl_s=request.ttl_s,
            max_uses=request.max_uses,
            auto_approve=request.auto_approve,
            labels=request.labels,
            description=request.description,
        )
    repo.insert_token(tx, new.info, new.secret_hash)
    tx.emit(subject_for(TokenCreated, token_id=new.info.token_id), TokenCreated(token=new.info, occurred_at=now))
    return CreateTokenReply(token=new.token, info=new.info)


def list_tokens(tx: SyncTx, request: ListTokensRequest, now: datetime) -> ListTokensReply:
    tokens = [domain.with_state(info, now) for info in repo.all_tokens(tx)]
    if not request.include_inactive:
        tokens = [info for info in tokens if info.state is TokenState.ACTIVE]
    return ListTokensReply(tokens=sorted(tokens, key=lambda info: info.created_at, reverse=True))


def revoke(tx: SyncTx, request: RevokeTokenRequest, now: datetime) -> RevokeTokenReply:
    found = repo.get_token(tx, request.token_id)
    if found is None:
        raise RequestError(
            ErrorCode.NOT_FOUND, f"no join token {request.token_id}; `flotilla token list` shows them", field="token_id"
        )
    info = found[0]
    if info.revoked_at is not None:
        raise RequestError(ErrorCode.CONFLICT, f"join token {request.token_id} is already revoked", field="token_id")
    revoked = domain.with_state(msgspec.structs.replace(info, revoked_at=now), now)
    repo.update_token(tx, revoked)
    tx.emit(subject_for(TokenRevoked, token_id=info.token_id), TokenRevoked(token=revoked, occurred_at=now))
    return RevokeTokenReply(info=revoked)
