"""Messages every service answers, whatever its domain."""

from __future__ import annotations

from flotilla_contracts.envelope import Message


class InfoRequest(Message, frozen=True, kw_only=True):
    """Ask a service who it is; no fields needed."""

    SCHEMA = "service.InfoRequest"


class InfoReply(Message, frozen=True, kw_only=True):
    """A service's identity: name, instance, versions, what it speaks and where it keeps state."""

    SCHEMA = "service.InfoReply"

    name: str
    instance_id: str
    version: str
    contracts_version: str
    schemas: list[str] = []
    state_path: str = ""
    started_at: str = ""
