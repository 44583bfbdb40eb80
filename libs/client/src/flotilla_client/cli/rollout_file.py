"""A rollout kept as a file: `flotilla upgrade plan|start -f rollout.yaml`. The file is a RolloutSpec in YAML (or
JSON), the fields the spec options set (docs/cli.md); a document with a `spec` key holding one is read from there,
so `flotilla upgrade status ID -o yaml` is a file `-f` takes again."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import click
import msgspec

from flotilla_client.cli.common import BadUsage
from flotilla_contracts.v1 import upgrade as up
from flotilla_kube.selectors import SelectorError, parse_selector
from flotilla_kube.versions import parse_version

F = TypeVar("F", bound=Callable[..., Any])
FIELDS = frozenset(f.encode_name for f in msgspec.structs.fields(up.RolloutSpec))


def filename_option(command: F) -> F:
    """`-f/--filename` for plan and start: the rollout from a file instead of the spec options."""
    return click.option(
        "-f",
        "--filename",
        "path",
        type=click.Path(dir_okay=False, path_type=Path),
        help="The rollout spec from a YAML or JSON file ('-' for stdin) instead of the options; "
        "`upgrade status ID -o yaml` output works as one.",
    )(command)


def read_text(path: Path) -> tuple[str, str]:
    """(text, source name) of a file, or of stdin for '-'."""
    source = "stdin" if str(path) == "-" else str(path)
    try:
        return (sys.stdin.read() if source == "stdin" else path.read_text(encoding="utf-8")), source
    except OSError as exc:
        raise BadUsage(f"cannot read {source}: {exc.strerror or exc}; nothing was sent") from None


def parse_rollout(text: str, source: str) -> up.RolloutSpec:
    """The RolloutSpec in a YAML/JSON text, checked as the options are; BadUsage naming the file and the field."""
    import yaml

    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise BadUsage(f"{source}: invalid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    if isinstance(document, dict) and isinstance(document.get("spec"), dict):
        document = document["spec"]  # a status reply or a wrapper: the spec it holds
    if not isinstance(document, dict):
        raise BadUsage(f"{source}: expected a mapping of rollout spec fields (target_version, waves, ...)")
    unknown = sorted(set(document) - FIELDS)
    if unknown:
        raise BadUsage(f"{source}: unknown field(s) {', '.join(unknown)}; the fields are {', '.join(sorted(FIELDS))}")
    try:
        spec = msgspec.convert(document, up.RolloutSpec, str_keys=True)
    except msgspec.ValidationError as exc:
        raise BadUsage(f"{source}: invalid_field: {exc}; nothing was sent") from None
    check(spec, source)
    return spec


def check(spec: up.RolloutSpec, source: str) -> None:
    """What the options check before sending, for a spec from a file: version, pre-release, selectors, zones."""
    try:
        target = parse_version(spec.target_version)
        if target.is_pre_release and not spec.allow_pre_release:
            raise ValueError(
                f"target_version {spec.target_version} is a pre-release ({target.pre}), not for production; "
                "set allow_pre_release: true to plan or roll it out anyway"
            )
        for selector in [spec.selector, *(s.selector for s in spec.waves.stages)]:
            parse_selector(selector)
        for window in spec.maintenance_windows:
            parse_selector(window.selector)
            try:
                ZoneInfo(window.timezone)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"maintenance window time zone {window.timezone!r} is not an IANA name") from None
    except (ValueError, SelectorError) as exc:
        raise BadUsage(f"{source}: {exc}; nothing was sent") from None
