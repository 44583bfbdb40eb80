"""Errors the client library raises on purpose; the CLI turns each into one line on stderr."""

from __future__ import annotations

from typing import Any


class FlotillaClientError(Exception):
    """Base of every error this package raises for a person to read."""


class ClientError(FlotillaClientError):
    """A request that did not succeed: a stable code (see flotilla_contracts.errors), a message and details."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = str(code)
        self.message = message
        self.details = details or {}

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class LocalFleetError(FlotillaClientError):
    """The local fleet (`flotilla up`/`down`) could not do what was asked; the message says what to do."""


class UsageError(FlotillaClientError):
    """Input refused before anything was sent (bad JSON, bad subject, bad duration)."""
