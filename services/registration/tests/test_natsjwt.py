"""NATS auth callout JWTs, the wire format without a server: natsjwt's account keys, its decoding of the
authorization requests nats-server signs (forged here with a server key, and rejected when tampered, malformed or
from the wrong issuer), and the user and authorization-response JWTs it issues (their claims checked against the
issuer's signature). test_natsjwt_server.py runs the same code against a real nats-server."""

from __future__ import annotations

import base64
import json
import os
import time
from typing import Any

import nacl.signing
import nkeys
import pytest
from natsjwt_support import ALICE, b64, unb64

from flotilla_contracts.permissions import Grant
from flotilla_registration.callout import user_permissions
from flotilla_registration.natsjwt import (
    AuthRequest,
    CalloutError,
    Permission,
    UserLimits,
    UserPermissions,
    decode_request,
    response_jwt,
    user_jwt,
)
from flotilla_registration.natskeys import new_account_seed, public_key

# --- helpers: keys, a forged server request, reading our own JWTs ------------------------------------------------


def new_seed(prefix: int) -> str:
    seed: bytes = nkeys.encode_seed(os.urandom(32), prefix)
    return seed.decode()


def public_of(seed: str) -> str:
    key: bytes = nkeys.from_seed(seed.encode()).public_key
    return key.decode()


USER_NKEY = public_of(new_seed(nkeys.PREFIX_BYTE_USER))
SERVER_SEED = new_seed(nkeys.PREFIX_BYTE_SERVER)
SERVER_ID = public_of(SERVER_SEED)


def request_payload(**nats_overrides: Any) -> dict[str, Any]:
    """An authorization request payload as nats-server 2.15 sends it (captured, then trimmed)."""
    body: dict[str, Any] = {
        "server_id": {"name": "n1", "host": "127.0.0.1", "id": SERVER_ID, "version": "2.15.1"},
        "user_nkey": USER_NKEY,
        "client_info": {"host": "127.0.0.1", "id": 8, "user": "alice", "kind": "Client", "type": "nats"},
        "connect_opts": {"user": "alice", "pass": "good", "lang": "python3", "version": "2.16.0", "protocol": 1},
        "type": "authorization_request",
        "version": 2,
    }
    body.update(nats_overrides)
    now = int(time.time())
    return {"aud": "nats-authorization-request", "exp": now + 2, "jti": "X", "iat": now, "sub": "A", "nats": body}


def sign(payload: dict[str, Any], *, seed: str = SERVER_SEED, header: dict[str, str] | None = None) -> str:
    """A JWT signed like nats-server signs its requests (iss set to the signing key)."""
    payload = {**payload, "iss": public_of(seed)}
    head = b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"} if header is None else header).encode())
    signing_input = f"{head}.{b64(json.dumps(payload).encode())}"
    signature: bytes = nkeys.from_seed(seed.encode()).sign(signing_input.encode())
    return f"{signing_input}.{b64(signature)}"


def read_verified(token: str, issuer: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and payload of a JWT, after checking its signature with the issuer's public key."""
    head, payload, signature = token.split(".")
    raw = base64.b32decode(issuer + "=" * (-len(issuer) % 8))[1:33]
    nacl.signing.VerifyKey(raw).verify(f"{head}.{payload}".encode(), unb64(signature))
    return json.loads(unb64(head)), json.loads(unb64(payload))


# --- unit: keys ----------------------------------------------------------------------------------------------------


def test_account_seed_and_public_key_have_account_prefixes() -> None:
    seed = new_account_seed()
    assert seed.startswith("SA")
    assert public_key(seed).startswith("A")
    assert public_key(seed) == public_of(seed)
    assert new_account_seed() != seed


def test_public_key_refuses_seeds_that_are_not_account_seeds() -> None:
    with pytest.raises(ValueError, match="account"):
        public_key(SERVER_SEED)
    with pytest.raises(ValueError, match="seed"):
        public_key("not-a-seed")


# --- unit: decoding the request -----------------------------------------------------------------------------------


def test_decode_request_reads_the_servers_fields_and_ignores_unknown_ones() -> None:
    payload = request_payload(future_field={"x": 1}, client_tls={"version": "1.3", "certs": ["pem"]})
    payload["nats"]["connect_opts"]["new_option"] = True
    request = decode_request(sign(payload).encode())
    assert isinstance(request, AuthRequest)
    assert request.user_nkey == USER_NKEY
    assert request.server_id.id == SERVER_ID
    assert request.server_id.version == "2.15.1"
    assert (request.connect_opts.user, request.connect_opts.password) == ("alice", "good")
    assert (request.client_info.user, request.client_info.id, request.client_info.kind) == ("alice", 8, "Client")
    assert request.client_tls is not None and request.client_tls.certs == ["pem"]
    assert request.connect_opts.auth_token == ""


def test_decode_request_accepts_a_str_and_a_header_in_other_case() -> None:
    token = sign(request_payload(), header={"typ": "jwt", "alg": "ED25519-NKEY"})
    assert decode_request(token).user_nkey == USER_NKEY


def test_decode_request_rejects_a_tampered_payload() -> None:
    head, _, signature = sign(request_payload()).split(".")
    forged = request_payload()
    forged["nats"]["connect_opts"]["user"] = "admin"
    forged["iss"] = SERVER_ID
    token = f"{head}.{b64(json.dumps(forged).encode())}.{signature}"
    with pytest.raises(CalloutError, match="signature"):
        decode_request(token)


@pytest.mark.parametrize(
    "header",
    [{"typ": "JWT", "alg": "ed25519"}, {"typ": "JWS", "alg": "ed25519-nkey"}, {"typ": "JWT", "alg": "HS256"}, {}],
)
def test_decode_request_rejects_a_wrong_header(header: dict[str, str]) -> None:
    with pytest.raises(CalloutError, match="header"):
        decode_request(sign(request_payload(), header=header))


@pytest.mark.parametrize("prefix", [nkeys.PREFIX_BYTE_ACCOUNT, nkeys.PREFIX_BYTE_USER, nkeys.PREFIX_BYTE_OPERATOR])
def test_decode_request_rejects_an_issuer_that_is_not_a_server(prefix: int) -> None:
    with pytest.raises(CalloutError, match="not a server public key"):
        decode_request(sign(request_payload(), seed=new_seed(prefix)))


def test_decode_request_rejects_other_claim_types_and_bad_user_keys() -> None:
    with pytest.raises(CalloutError, match="'user'"):
        decode_request(sign(request_payload(type="user")))
    with pytest.raises(CalloutError, match="user_nkey"):
        decode_request(sign(request_payload(user_nkey=SERVER_ID)))


@pytest.mark.parametrize("token", ["", "abc", "a.b", "a.b.c.d", "!!!.@@@.###", b"\xff\xfe.x.y"])
def test_decode_request_rejects_malformed_tokens(token: str | bytes) -> None:
    with pytest.raises(CalloutError):
        decode_request(token)


def test_decode_request_rejects_payloads_of_the_wrong_shape() -> None:
    with pytest.raises(CalloutError, match="claims JSON"):
        decode_request(sign(request_payload(user_nkey=42)))


# --- unit: the JWTs we issue --------------------------------------------------------------------------------------


def test_user_jwt_is_signed_by_the_issuer_and_carries_the_user_claims() -> None:
    seed = new_account_seed()
    before = int(time.time())
    token = user_jwt(seed, user_nkey=USER_NKEY, account="FLEET", name="alice", permissions=ALICE, expires_in_s=60)
    header, claims = read_verified(token, public_key(seed))
    assert header == {"typ": "JWT", "alg": "ed25519-nkey"}
    assert claims["iss"] == public_key(seed)
    assert (claims["sub"], claims["aud"], claims["name"]) == (USER_NKEY, "FLEET", "alice")
    assert before <= claims["iat"] <= int(time.time())
    assert claims["exp"] == claims["iat"] + 60
    assert claims["jti"] and "=" not in claims["jti"]
    assert claims["nats"] == {
        "pub": {"allow": ["demo.alice.>"]},
        "sub": {"allow": ["_INBOX.alice.>", "demo.alice.>", "deliver.alice"]},
        "resp": {"max": 1, "ttl": 0},
        "subs": -1,
        "data": -1,
        "payload": -1,
        "type": "user",
        "version": 2,
    }


def test_user_jwt_without_expiry_or_resp_leaves_them_out() -> None:
    permissions = UserPermissions(pub=Permission(deny=[">"]), sub=Permission())
    token = user_jwt(new_account_seed(), user_nkey=USER_NKEY, account="FLEET", name="n", permissions=permissions)
    _, claims = json.loads(unb64(token.split(".")[0])), json.loads(unb64(token.split(".")[1]))
    assert "exp" not in claims
    assert "resp" not in claims["nats"]
    assert claims["nats"]["pub"] == {"deny": [">"]}
    assert claims["nats"]["sub"] == {}


def test_user_jwt_carries_the_member_limits_the_server_enforces() -> None:
    grant = Grant(publish=("fleet.v1.hb.c1.*",), subscribe=("_INBOX.c.c1.>",))
    permissions = user_permissions(grant, 60, UserLimits(subs=256, payload=512 * 1024))
    token = user_jwt(new_account_seed(), user_nkey=USER_NKEY, account="FLEET", name="c.c1", permissions=permissions)
    claims = json.loads(unb64(token.split(".")[1]))
    assert (claims["nats"]["subs"], claims["nats"]["payload"], claims["nats"]["data"]) == (256, 512 * 1024, -1)


def test_user_jwt_refuses_a_user_nkey_that_is_not_a_user_key() -> None:
    with pytest.raises(ValueError, match="user_nkey"):
        user_jwt(new_account_seed(), user_nkey=SERVER_ID, account="FLEET", name="x", permissions=ALICE)


def test_response_jwt_carries_the_user_jwt_for_the_server() -> None:
    seed = new_account_seed()
    inner = user_jwt(seed, user_nkey=USER_NKEY, account="FLEET", name="alice", permissions=ALICE)
    token = response_jwt(seed, user_nkey=USER_NKEY, server_id=SERVER_ID, user_jwt=inner)
    header, claims = read_verified(token, public_key(seed))
    assert header == {"typ": "JWT", "alg": "ed25519-nkey"}
    assert (claims["iss"], claims["sub"], claims["aud"]) == (public_key(seed), USER_NKEY, SERVER_ID)
    assert claims["nats"] == {"jwt": inner, "type": "authorization_response", "version": 2}


def test_response_jwt_carries_an_error() -> None:
    seed = new_account_seed()
    token = response_jwt(seed, user_nkey=USER_NKEY, server_id=SERVER_ID, error="wrong password")
    _, claims = read_verified(token, public_key(seed))
    assert claims["nats"] == {"error": "wrong password", "type": "authorization_response", "version": 2}


@pytest.mark.parametrize(("jwt", "error"), [(None, None), ("x.y.z", "both"), (None, ""), ("", None)])
def test_response_jwt_wants_exactly_one_of_jwt_and_error(jwt: str | None, error: str | None) -> None:
    with pytest.raises(ValueError):
        response_jwt(new_account_seed(), user_nkey=USER_NKEY, server_id=SERVER_ID, user_jwt=jwt, error=error)


def test_issuing_refuses_a_non_account_seed() -> None:
    with pytest.raises(ValueError, match="account"):
        response_jwt(SERVER_SEED, user_nkey=USER_NKEY, server_id=SERVER_ID, error="no")
