"""Typed settings read from `FLOTILLA_<SERVICE>_*` environment variables, with errors naming the variable."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Mapping
from typing import TypeVar

import msgspec

from flotilla_contracts.envelope import DEFAULT_MAX_MESSAGE_BYTES
from flotilla_runtime.errors import SettingsError

_PATH_RE = re.compile(r" - at `\$\.(?P<field>\w+)`")


class ServiceSettings(msgspec.Struct, kw_only=True, frozen=True):
    """Settings every service has; a service subclasses this to add its own."""

    nats_url: str = "nats://127.0.0.1:4222"
    state_dir: str = ""  # default: .flotilla/<service> in the working directory
    http_host: str = "127.0.0.1"
    http_port: int = msgspec.field(default=0)  # 0: any free port (logged at start)
    log_level: str = "INFO"
    log_format: str = "json"  # json | text
    instance_id: str = ""  # default: a random id per process
    trace_sample_ratio: float = 1.0
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    shutdown_timeout_s: float = 10.0
    outbox_batch: int = 1000  # events per JetStream round; the relay keeps 3 rounds in flight
    stream_replicas: int = 1  # replicas of the JetStream streams a service creates (3 in production)
    bus_down_grace_s: float = 30.0  # /readyz says not ready once the bus connection is down this long


S = TypeVar("S", bound=ServiceSettings)

# Read as FLOTILLA_<FIELD> when FLOTILLA_<SERVICE>_<FIELD> is not set, so one variable serves all.
SHARED_FIELDS = frozenset(
    {"nats_url", "log_level", "log_format", "trace_sample_ratio", "stream_replicas", "bus_down_grace_s"}
)


def env_prefix(service: str) -> str:
    """`upgrade-orchestrator` -> `FLOTILLA_UPGRADE_ORCHESTRATOR_`."""
    return "FLOTILLA_" + service.upper().replace("-", "_") + "_"


def load_settings(settings_type: type[S], service: str, environ: Mapping[str, str] | None = None) -> S:
    """Build settings from the environment; raise SettingsError naming the variable that is wrong."""
    env = os.environ if environ is None else environ
    prefix = env_prefix(service)
    values: dict[str, str] = {}
    sources: dict[str, str] = {}
    for field in msgspec.structs.fields(settings_type):
        name = prefix + field.name.upper()
        shared = "FLOTILLA_" + field.name.upper()
        if name in env:
            values[field.name], sources[field.name] = env[name], name
        elif field.name in SHARED_FIELDS and shared in env:
            values[field.name], sources[field.name] = env[shared], shared
    known = {prefix + f.name.upper() for f in msgspec.structs.fields(settings_type)}
    unknown = sorted(key for key in env if key.startswith(prefix) and key not in known)
    if unknown:
        raise SettingsError(f"unknown setting {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    try:
        settings = msgspec.convert(values, type=settings_type, strict=False)
    except msgspec.ValidationError as exc:
        match = _PATH_RE.search(str(exc))
        bad = match.group("field") if match else ""
        variable = sources.get(bad, prefix + bad.upper())
        detail = _PATH_RE.sub("", str(exc))
        raise SettingsError(f"{variable}={values.get(bad, '')!r} is invalid: {detail}") from None
    if not settings.instance_id:
        settings = msgspec.structs.replace(settings, instance_id=uuid.uuid4().hex[:12])
    if not settings.state_dir:
        settings = msgspec.structs.replace(settings, state_dir=os.path.join(".flotilla", service))
    _validate(settings, prefix)
    return settings


def _validate(settings: ServiceSettings, prefix: str) -> None:
    if not settings.nats_url.startswith(("nats://", "tls://", "ws://", "wss://")):
        raise SettingsError(f"{prefix}NATS_URL must start with nats://, tls://, ws:// or wss://")
    if settings.log_format not in ("json", "text"):
        raise SettingsError(f"{prefix}LOG_FORMAT must be json or text, not {settings.log_format!r}")
    if not 0.0 <= settings.trace_sample_ratio <= 1.0:
        raise SettingsError(f"{prefix}TRACE_SAMPLE_RATIO must be between 0 and 1")
    if not 0 <= settings.http_port <= 65535:
        raise SettingsError(f"{prefix}HTTP_PORT must be between 0 and 65535")
    if settings.stream_replicas not in (1, 3, 5):
        raise SettingsError(f"{prefix}STREAM_REPLICAS must be 1, 3 or 5, not {settings.stream_replicas}")
    if settings.bus_down_grace_s < 0:
        raise SettingsError(f"{prefix}BUS_DOWN_GRACE_S must not be negative")
    if settings.max_message_bytes < 1024:
        raise SettingsError(f"{prefix}MAX_MESSAGE_BYTES must be at least 1024")
