"""Errors classified by what should happen next: retry, give up and report, or answer the requester."""

from __future__ import annotations

import errno
import sqlite3
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


class DiskFullError(TemporaryError):
    """The volume holding the service's state is full: nothing was written; it works again once space is freed."""

    def __init__(self, where: str, cause: str) -> None:
        super().__init__(
            f"disk full: {where} could not be written ({cause}); nothing was changed. "
            "Free space on that volume; the service retries on its own and commands succeed again once it has room",
            delay_s=5.0,
        )


def storage_error(exc: BaseException, where: str) -> TemporaryError | None:
    """The TemporaryError a storage failure stands for (disk full, database busy), or None for anything else.

    SQLite says SQLITE_FULL ("database or disk is full"), SQLITE_BUSY or SQLITE_LOCKED; a plain file write says
    ENOSPC or EDQUOT. Other errors (constraints, bad SQL) are bugs and stay as they are.
    """
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        primary = code & 0xFF if isinstance(code, int) else None
        if primary == sqlite3.SQLITE_FULL or (primary is None and "database or disk is full" in str(exc)):
            return DiskFullError(where, str(exc))
        if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or (primary is None and "locked" in str(exc)):
            return TemporaryError(f"{where} is busy ({exc}); retry shortly")
        return None
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(exc.filename or where, exc.strerror or str(exc))
    return None


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
