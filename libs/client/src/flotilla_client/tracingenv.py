"""The tracing settings of a local fleet: what `flotilla up` ran with (OTEL_*, FLOTILLA_JAEGER_URL), kept in
run.json so that `flotilla sim` and every later command trace to the same place without being told again."""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from pathlib import Path

from flotilla_client import runfile
from flotilla_client.errors import LocalFleetError

JAEGER_URL_ENV = "FLOTILLA_JAEGER_URL"  # the CLI's `--trace` prints links into this UI
ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def settings_of(env: Mapping[str, str]) -> dict[str, str]:
    """The tracing settings among environment variables."""
    return {k: v for k, v in env.items() if k.startswith("OTEL_") or k == JAEGER_URL_ENV}


def with_recorded(env: Mapping[str, str], recorded: Mapping[str, str]) -> dict[str, str]:
    """`env` with the recorded settings under it; an environment that names an exporter endpoint of its own
    keeps its own tracing settings only (one may point a single command elsewhere)."""
    if any(env.get(name) for name in ENDPOINTS):
        return dict(env)
    return {**recorded, **env}


def recorded(state_dir: Path) -> dict[str, str]:
    """The settings `flotilla up` recorded in this state folder (none when no fleet runs from it; never raises)."""
    try:
        info = runfile.load(state_dir)
    except LocalFleetError:
        return {}
    return dict(info.tracing) if info is not None else {}


def adopt(state_dir: Path, env: MutableMapping[str, str] = os.environ) -> None:
    """Put the recorded settings into this process's environment (before tracing is set up)."""
    kept = recorded(state_dir)
    if kept:
        merged = with_recorded(env, kept)
        env.update({k: v for k, v in merged.items() if k not in env})
