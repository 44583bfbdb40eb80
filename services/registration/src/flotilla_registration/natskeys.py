"""NATS nkeys: the callout issuer's account seed and public key, role checks of public keys, and the proof a
node gives of its own key (its signature of the server's nonce, checked as nats-server checks an nkey user's)."""

from __future__ import annotations

import base64
import binascii
import os
from typing import Any

import nacl.exceptions
import nacl.signing
import nkeys  # untyped (nkeys 0.2.1): the workspace's mypy config lets it in as Any


def new_account_seed() -> str:
    """A fresh account nkey seed ("SA..."): the auth callout issuer; its public key goes into the server config."""
    seed: bytes = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_ACCOUNT)
    return seed.decode()


def public_key(seed: str) -> str:
    """The "A..." public key of an account seed (what `auth_callout { issuer: ... }` names)."""
    key: bytes = account_keypair(seed).public_key
    return key.decode()


def account_keypair(seed: str) -> Any:
    """The nkeys KeyPair of an account seed; ValueError (fix the configured seed) for anything else."""
    try:
        prefix, _ = nkeys.decode_seed(seed.encode())
    except nkeys.NkeysError as exc:
        raise ValueError(
            f"not an nkey seed ({exc}): configure an account seed (SA...) from new_account_seed()"
        ) from exc
    if prefix != nkeys.PREFIX_BYTE_ACCOUNT:
        raise ValueError("not an account seed: the auth callout issuer must be an account nkey (SA...)")
    return nkeys.from_seed(seed.encode())


def decode_public_key(key: str, prefix: int) -> bytes | None:
    """The raw ed25519 key of an encoded public nkey with this role prefix, or None if it is not one."""
    try:
        raw = base64.b32decode(key + "=" * (-len(key) % 8))
    except (binascii.Error, ValueError):
        return None
    if len(raw) != 35 or raw[0] != prefix:
        return None
    if nkeys.crc16_checksum(raw[:-2]) != raw[-2:]:
        return None
    return raw[1:33]


def is_user_key(key: str) -> bool:
    """Whether `key` is a valid public user nkey ("U..."), as the request's `user_nkey` must be."""
    return decode_public_key(key, nkeys.PREFIX_BYTE_USER) is not None


def is_server_key(key: str) -> bool:
    """Whether `key` is a valid public server nkey ("N..."), as a request's issuer and `server_id.id` are."""
    return decode_public_key(key, nkeys.PREFIX_BYTE_SERVER) is not None


def verify_nonce_signature(nkey: str, nonce: str, sig: str) -> bool:
    """Whether `sig` (the client's CONNECT `sig`: base64, URL-safe raw as Go clients send it or standard as nats-py
    does) is `nkey`'s ed25519 signature of the server's `nonce`, as nats-server checks an nkey user's."""
    raw_key = decode_public_key(nkey, nkeys.PREFIX_BYTE_USER)
    if raw_key is None or not nonce or not sig:
        return False
    for decode in (base64.urlsafe_b64decode, base64.b64decode):
        try:
            signature = decode(sig + "=" * (-len(sig) % 4))
            nacl.signing.VerifyKey(raw_key).verify(nonce.encode(), signature)
        except (binascii.Error, ValueError, nacl.exceptions.BadSignatureError):
            continue
        return True
    return False
