"""Stable error codes carried in error replies and dead-letter events; clients branch on these."""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """A code never changes meaning within v1; new codes may be added."""

    # The message itself is unusable.
    MALFORMED = "malformed"  # not JSON, or not an object
    INVALID_FIELD = "invalid_field"  # a field is missing, of the wrong type, or out of range
    INVALID_ID = "invalid_id"  # an id with a dot, space or wildcard, or too long
    WRONG_SCHEMA = "wrong_schema"  # the Flotilla-Schema header names another message
    UNSUPPORTED_VERSION = "unsupported_version"  # a schema version this service does not serve
    TOO_LARGE = "too_large"  # over the service's message size limit
    SUBJECT_MISMATCH = "subject_mismatch"  # ids in the subject and the body differ (e.g. another node's)
    # The request is well-formed but cannot be done.
    NOT_FOUND = "not_found"
    ALREADY_EXISTS = "already_exists"
    CONFLICT = "conflict"  # the state does not allow it (e.g. duplicate approval)
    PRECONDITION_FAILED = "precondition_failed"
    UNAUTHORIZED = "unauthorized"  # missing or bad credential
    FORBIDDEN = "forbidden"
    # Join tokens.
    TOKEN_INVALID = "token_invalid"
    TOKEN_EXPIRED = "token_expired"
    TOKEN_REVOKED = "token_revoked"
    TOKEN_EXHAUSTED = "token_exhausted"
    IDENTITY_CONFLICT = "identity_conflict"  # another cluster identity holds that name
    # Upgrades and placement.
    SKEW_VIOLATION = "skew_violation"
    UNKNOWN_VERSION = "unknown_version"
    INVALID_SELECTOR = "invalid_selector"
    INVALID_PLAN = "invalid_plan"
    ROLLOUT_CONFLICT = "rollout_conflict"
    STALE_EPOCH = "stale_epoch"
    PRE_RELEASE_NOT_ALLOWED = "pre_release_not_allowed"  # a pre-release target without allow_pre_release
    # The service side.
    UNAVAILABLE = "unavailable"  # temporary: retry with back-off
    TIMEOUT = "timeout"
    INTERNAL = "internal"


# Maps each code to the status number carried in the NATS micro `Nats-Service-Error-Code` header.
STATUS: dict[ErrorCode, int] = {
    ErrorCode.MALFORMED: 400,
    ErrorCode.INVALID_FIELD: 400,
    ErrorCode.INVALID_ID: 400,
    ErrorCode.WRONG_SCHEMA: 400,
    ErrorCode.UNSUPPORTED_VERSION: 400,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.SUBJECT_MISMATCH: 400,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.ALREADY_EXISTS: 409,
    ErrorCode.CONFLICT: 409,
    ErrorCode.PRECONDITION_FAILED: 412,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.TOKEN_INVALID: 401,
    ErrorCode.TOKEN_EXPIRED: 401,
    ErrorCode.TOKEN_REVOKED: 401,
    ErrorCode.TOKEN_EXHAUSTED: 401,
    ErrorCode.IDENTITY_CONFLICT: 409,
    ErrorCode.SKEW_VIOLATION: 422,
    ErrorCode.UNKNOWN_VERSION: 422,
    ErrorCode.INVALID_SELECTOR: 400,
    ErrorCode.INVALID_PLAN: 422,
    ErrorCode.ROLLOUT_CONFLICT: 409,
    ErrorCode.STALE_EPOCH: 409,
    ErrorCode.PRE_RELEASE_NOT_ALLOWED: 422,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.TIMEOUT: 504,
    ErrorCode.INTERNAL: 500,
}

RETRYABLE = frozenset({ErrorCode.UNAVAILABLE, ErrorCode.TIMEOUT})
