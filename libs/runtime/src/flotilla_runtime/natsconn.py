"""NATS connection details every Flotilla client shares: credentials in the URL, the inbox prefix, TLS.

Kept free of FastStream so the CLI and the agents import it cheaply.
"""

from __future__ import annotations

import os
import ssl
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from flotilla_contracts.permissions import inbox_prefix

CA_ENV = "FLOTILLA_NATS_CA"


def nats_user(url: str) -> str:
    """The user name in a NATS URL (`nats://user:password@host:port`), or ""."""
    return urlsplit(url).username or ""


def redact(url: str) -> str:
    """The URL without its password, for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def with_user(url: str, user: str, password: str) -> str:
    """`url` with its credentials replaced by these."""
    parts = urlsplit(url)
    netloc = f"{user}:{password}@{parts.hostname or '127.0.0.1'}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def without_user(url: str) -> str:
    """`url` without credentials."""
    parts = urlsplit(url)
    netloc = (parts.hostname or "127.0.0.1") + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def connect_options(url: str) -> dict[str, Any]:
    """Options every Flotilla connection needs on an authenticated bus, from the URL and the environment.

    The inbox prefix follows the user name (`_INBOX.<user>`): a user may subscribe only below its own
    prefix (flotilla_contracts.permissions). `FLOTILLA_NATS_CA` names the CA file that signed the server's
    TLS certificate (for `tls://` URLs with a private CA).
    """
    options: dict[str, Any] = {"inbox_prefix": inbox_prefix(nats_user(url))}
    ca = os.environ.get(CA_ENV, "")
    if ca:
        if not os.path.exists(ca):
            raise FileNotFoundError(f"{CA_ENV}={ca}: no such CA file; set it to the CA that signed the NATS server")
        options["tls"] = ssl.create_default_context(cafile=ca)
    return options
