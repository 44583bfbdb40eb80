"""Errors classified by what should happen next: retry, give up and report, or answer the requester."""

from __future__ import annotations

from typing import Any

from flotilla_contracts.envelope import ErrorBody
from flotilla_contracts.errors import RETRYABLE, ErrorCode


class FlotillaError(Exception):
    """Base of every error the runtime raises on purpose."""


class TemporaryError(FlotillaError):
    """Worth retrying after a delay (the bus is down, the database is busy)."""

    def __init__(self, message: str, *, delay_s: float = 1.0) -> None:
        super().__init__(message)
        self.delay_s = delay_s


class PermanentError(FlotillaError):
    """Will never succeed: terminate the message and dead-letter it with this reason."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class RequestError(FlotillaError):
    """A command that cannot be done as asked: answered with an error reply carrying a stable code."""

    def __init__(self, code: ErrorCode, message: str, **details: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details

    def to_body(self) -> ErrorBody:
        return ErrorBody(code=self.code, message=self.message, details=self.details, retryable=self.code in RETRYABLE)


class SettingsError(FlotillaError):
    """A setting that is missing or malformed; the message names the environment variable."""
