"""NATS auth callout wire formats: decode the server's authorization request, sign the user and response JWTs.

nats-server (v2.10+) with `authorization { auth_callout { ... } }` publishes every connecting client's credentials
as a server-signed JWT on `$SYS.REQ.USER.AUTH`; the callout service answers with an account-signed
`authorization_response` JWT that carries either an error or a `user` JWT with the client's permissions.

The format follows github.com/nats-io/jwt/v2 (what nats-server decodes): header `{"typ":"JWT","alg":"ed25519-nkey"}`,
base64url without padding for all three parts, an ed25519 signature over `header.payload`, the claim fields
`aud/exp/jti/iat/iss/name/nbf/sub` and the type-specific part under `nats` with `type` and `version: 2`.
Pure functions over strings and keys, no I/O: the caller owns the NATS connection and the account seed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from typing import Final, Generic, TypeVar

import msgspec
import nacl.exceptions
import nacl.signing
import nkeys  # untyped (nkeys 0.2.1): the workspace's mypy config lets it in as Any

from flotilla_registration.natskeys import account_keypair, decode_public_key, is_user_key

JWT_TYPE: Final = "JWT"
JWT_ALGORITHM: Final = "ed25519-nkey"
JWT_VERSION: Final = 2
REQUEST_TYPE: Final = "authorization_request"
RESPONSE_TYPE: Final = "authorization_response"
USER_TYPE: Final = "user"
NO_LIMIT: Final = -1  # jwt.NoLimit: subs, data and payload without a cap, as Go's NewUserClaims sets them

_HEADER: Final = {"typ": JWT_TYPE, "alg": JWT_ALGORITHM}


class CalloutError(Exception):
    """The authorization request is not a valid server-signed JWT; the caller drops it (no response is sent)."""


# --- claims: the permission parts callers build ----------------------------------------------------------------


class Permission(msgspec.Struct, omit_defaults=True):
    """Subjects a user may publish or subscribe to; both lists empty means *no restriction* in nats-server."""

    allow: list[str] = []
    deny: list[str] = []


class ResponsePermission(msgspec.Struct):
    """Lets a user publish to reply subjects of messages it received, outside its `pub` allow list.

    `max` is how many publishes per received reply subject, `ttl` how long (Go duration: NANOSECONDS) after the
    delivery. nats-server replaces 0 by its defaults (max 1, ttl 2 minutes); a negative value means unlimited.
    """

    max: int
    ttl: int


class UserLimits(msgspec.Struct, kw_only=True, frozen=True):
    """jwt.NatsLimits of a user; NO_LIMIT (-1) for none.

    `subs`: subscriptions the connection may hold; `payload`: bytes of one message; `data`: as Go's jwt writes it.
    Caveat (measured with nats-server 2.15, tests/integration/test_member_flood.py): with `auth_callout` in a
    configuration-mode server, the server takes only the permissions from the user JWT (buildInternalNkeyUser),
    not these limits; they take effect in operator mode, or once members get an account of their own with
    `limits` in the server configuration.
    """

    subs: int = NO_LIMIT
    data: int = NO_LIMIT
    payload: int = NO_LIMIT


class UserPermissions(msgspec.Struct, kw_only=True):
    """The `pub`/`sub`/`resp` permissions of a user JWT, and its limits."""

    pub: Permission
    sub: Permission
    resp: ResponsePermission | None = None
    limits: UserLimits = UserLimits()


# --- the decoded authorization request (jwt.AuthorizationRequest); every field optional -----------------------


class ServerId(msgspec.Struct):
    """The server asking: its `id` (the server's public nkey, "N...") is the response's audience."""

    name: str = ""
    host: str = ""
    id: str = ""
    version: str = ""
    cluster: str = ""
    tags: list[str] | None = None
    xkey: str = ""


class ClientInfo(msgspec.Struct):
    """What the server knows about the connecting client (address, connection id, kind)."""

    host: str = ""
    id: int = 0
    user: str = ""
    name: str = ""
    tags: list[str] | None = None
    name_tag: str = ""
    kind: str = ""
    type: str = ""
    mqtt_id: str = ""
    nonce: str = ""


class ConnectOpts(msgspec.Struct):
    """The credentials and identity from the client's CONNECT (`pass` is `password` here: a Python keyword)."""

    jwt: str = ""
    nkey: str = ""
    sig: str = ""
    auth_token: str = ""
    user: str = ""
    password: str = msgspec.field(default="", name="pass")
    name: str = ""
    lang: str = ""
    version: str = ""
    protocol: int = 0


class ClientTls(msgspec.Struct):
    """TLS state of the client connection, when it used TLS."""

    version: str = ""
    cipher: str = ""
    certs: list[str] | None = None
    verified_chains: list[list[str]] | None = None
    server_name: str = ""


class AuthRequest(msgspec.Struct):
    """The `nats` part of an authorization request: answer for `user_nkey`, addressed to `server_id.id`."""

    server_id: ServerId = msgspec.field(default_factory=ServerId)
    user_nkey: str = ""
    client_info: ClientInfo = msgspec.field(default_factory=ClientInfo)
    connect_opts: ConnectOpts = msgspec.field(default_factory=ConnectOpts)
    client_tls: ClientTls | None = None
    request_nonce: str = ""
    tags: list[str] | None = None
    type: str = ""
    version: int = 0


# --- the JWT envelope ------------------------------------------------------------------------------------------

N = TypeVar("N")


class _Claims(msgspec.Struct, omit_defaults=True):
    """jwt.ClaimsData, fields in Go's order so the `jti` hash input matches what Go would hash."""

    aud: str = ""
    exp: int = 0
    jti: str = ""
    iat: int = 0
    iss: str = ""
    name: str = ""
    nbf: int = 0
    sub: str = ""


class _Jwt(_Claims, Generic[N], omit_defaults=True):
    """Claims plus the type-specific `nats` part."""

    nats: N | None = None


class _Header(msgspec.Struct):
    typ: str = ""
    alg: str = ""


class _UserNats(msgspec.Struct, kw_only=True, omit_defaults=True):
    """jwt.User: permissions, limits and the claim type; only `resp` is left out when unset.

    Everything but `resp` is required so omit_defaults never drops it: without `version: 2` nats-server reads
    the JWT as version 1 and fails its signature check.
    """

    pub: Permission
    sub: Permission
    resp: ResponsePermission | None = None
    subs: int
    data: int
    payload: int
    type: str
    version: int


class _ResponseNats(msgspec.Struct, kw_only=True, omit_defaults=True):
    """jwt.AuthorizationResponse: exactly one of `jwt` (the user JWT) and `error`, plus the claim type."""

    jwt: str = ""
    error: str = ""
    type: str
    version: int


# --- encoding --------------------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(part: str, what: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError) as exc:
        raise CalloutError(f"authorization request {what} is not base64url: {exc}") from exc


def _jti(claims: _Claims) -> str:
    """Go's ClaimsData.hash: base32 (no padding) of SHA-512/256 over the claims JSON, computed with jti empty."""
    digest = hashlib.new("sha512_256", msgspec.json.encode(claims)).digest()
    return base64.b32encode(digest).rstrip(b"=").decode()


def _sign(issuer_seed: str, claims: _Claims, nats: msgspec.Struct) -> str:
    """Issue a JWT: set iss and jti, encode header and payload, sign `header.payload` with the issuer key."""
    keypair = account_keypair(issuer_seed)
    claims = msgspec.structs.replace(claims, iss=keypair.public_key.decode(), jti="")
    claims = msgspec.structs.replace(claims, jti=_jti(claims))
    payload = _Jwt(**msgspec.structs.asdict(claims), nats=nats)
    signing_input = f"{_b64(msgspec.json.encode(_HEADER))}.{_b64(msgspec.json.encode(payload))}"
    signature: bytes = keypair.sign(signing_input.encode())
    return f"{signing_input}.{_b64(signature)}"


def user_jwt(
    issuer_seed: str,
    *,
    user_nkey: str,
    account: str,
    name: str,
    permissions: UserPermissions,
    expires_in_s: int = 0,
) -> str:
    """The user JWT for the connecting client `user_nkey`, placing it in `account` (config mode: the account name).

    `name` becomes the connection's user name in the server's monitoring; `expires_in_s` > 0 makes the server
    disconnect the client when the JWT expires (it must reconnect and pass the callout again).
    """
    if not is_user_key(user_nkey):
        raise ValueError(f"user_nkey {user_nkey!r} is not a public user nkey: pass the request's user_nkey")
    now = int(time.time())
    expires = now + expires_in_s if expires_in_s > 0 else 0
    claims = _Claims(sub=user_nkey, aud=account, name=name, iat=now, exp=expires)
    nats = _UserNats(
        pub=permissions.pub,
        sub=permissions.sub,
        resp=permissions.resp,
        subs=permissions.limits.subs,
        data=permissions.limits.data,
        payload=permissions.limits.payload,
        type=USER_TYPE,
        version=JWT_VERSION,
    )
    return _sign(issuer_seed, claims, nats)


def response_jwt(
    issuer_seed: str,
    *,
    user_nkey: str,
    server_id: str,
    user_jwt: str | None = None,
    error: str | None = None,
) -> str:
    """The authorization response to a request: the user JWT (client admitted) or an error (client refused).

    The server checks `sub` == the request's `user_nkey` and `aud` == its own id (`server_id.id` of the request),
    so pass both straight from the decoded request. The error text ends up in the server log, not at the client.
    """
    if bool(user_jwt) == bool(error):
        raise ValueError("pass exactly one of user_jwt (admit the client) and a non-empty error (refuse it)")
    claims = _Claims(sub=user_nkey, aud=server_id, iat=int(time.time()))
    nats = _ResponseNats(jwt=user_jwt or "", error=error or "", type=RESPONSE_TYPE, version=JWT_VERSION)
    return _sign(issuer_seed, claims, nats)


# --- decoding --------------------------------------------------------------------------------------------------


def _check_header(part: str) -> None:
    try:
        header = msgspec.json.decode(_unb64(part, "header"), type=_Header)
    except msgspec.DecodeError as exc:
        raise CalloutError(f"authorization request header is not a JWT header: {exc}") from exc
    if header.typ.upper() != JWT_TYPE or header.alg.lower() != JWT_ALGORITHM:
        raise CalloutError(
            f"authorization request header is typ={header.typ!r} alg={header.alg!r}, "
            f"expected typ={JWT_TYPE!r} alg={JWT_ALGORITHM!r}"
        )


def _verify_signature(issuer: str, signing_input: str, signature: bytes) -> None:
    raw_key = decode_public_key(issuer, nkeys.PREFIX_BYTE_SERVER)
    if raw_key is None:
        raise CalloutError(f"authorization request issuer {issuer!r} is not a server public key (N...)")
    try:
        nacl.signing.VerifyKey(raw_key).verify(signing_input.encode(), signature)
    except (nacl.exceptions.BadSignatureError, ValueError) as exc:
        raise CalloutError(f"authorization request signature does not verify with its issuer {issuer!r}") from exc


def decode_request(token: bytes | str) -> AuthRequest:
    """Verify and decode an authorization request from `$SYS.REQ.USER.AUTH` (the message body, unencrypted).

    Checks the header, the ed25519 signature by the `iss` key, that `iss` is a server key and that the claim type
    is `authorization_request` with a valid user nkey; anything else raises CalloutError, and the caller
    should not answer (the server then refuses the client when its auth timeout passes).
    """
    text = token.decode(errors="replace") if isinstance(token, bytes) else token
    parts = text.strip().split(".")
    if len(parts) != 3:
        raise CalloutError(f"authorization request is not a JWT: {len(parts)} dot-separated parts, expected 3")
    _check_header(parts[0])
    try:
        claims = msgspec.json.decode(_unb64(parts[1], "payload"), type=_Jwt[AuthRequest])
    except msgspec.DecodeError as exc:
        raise CalloutError(f"authorization request payload is not valid claims JSON: {exc}") from exc
    _verify_signature(claims.iss, f"{parts[0]}.{parts[1]}", _unb64(parts[2], "signature"))
    request = claims.nats
    if request is None or request.type != REQUEST_TYPE:
        found = None if request is None else request.type
        raise CalloutError(f"JWT is of type {found!r}, not an {REQUEST_TYPE!r}")
    if not is_user_key(request.user_nkey):
        raise CalloutError(f"authorization request user_nkey {request.user_nkey!r} is not a public user nkey")
    return request
