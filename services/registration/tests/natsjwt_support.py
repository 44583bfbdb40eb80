"""Helpers shared by the natsjwt tests (test_natsjwt.py, test_natsjwt_server.py): base64url without padding, as
JWT segments use it, and ALICE, the permissions the callout grants alice/good.

Imported by name (`from natsjwt_support import ...`), like registration_harness.py: this folder is on pytest's
pythonpath in pyproject.toml (tests are collected with --import-mode=importlib, and there is no __init__.py)."""

from __future__ import annotations

import base64

from flotilla_registration.natsjwt import Permission, ResponsePermission, UserPermissions


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


ALICE = UserPermissions(
    pub=Permission(allow=["demo.alice.>"]),
    sub=Permission(allow=["_INBOX.alice.>", "demo.alice.>", "deliver.alice"]),
    resp=ResponsePermission(max=1, ttl=0),
)
