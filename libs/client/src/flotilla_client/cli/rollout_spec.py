"""What `flotilla upgrade plan` and `start` take: the rollout spec's options (the same fields as RolloutSpec) and
how they become one, including maintenance windows with their time zone."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import click
from click.core import ParameterSource

from flotilla_client.cli.common import BadUsage, Failure
from flotilla_client.cli.rollout_file import filename_option, parse_rollout, read_text
from flotilla_client.durations import parse_duration
from flotilla_contracts.v1 import upgrade as up
from flotilla_contracts.v1.agent import DrainOptions
from flotilla_kube.selectors import SelectorError, parse_selector
from flotilla_kube.versions import parse_version

F = TypeVar("F", bound=Callable[..., Any])


def spec_options(command: F) -> F:
    """The options that describe a rollout, shared by `plan` and `start`."""
    options = [
        click.option(
            "--to", "target", metavar="VERSION", help="Target Kubernetes version, e.g. v1.30.4 (required without -f)."
        ),
        click.option(
            "--allow-pre-release",
            is_flag=True,
            help="Allow a pre-release target (v1.38.0-rc.1, -beta.0, -alpha.2); refused without it. Not for "
            "production: kubeadm runs with --allow-release-candidate-upgrades or --allow-experimental-upgrades.",
        ),
        click.option("-l", "--selector", default="", help="Only clusters matching this label selector."),
        click.option("--name", default="", help="A name for the rollout."),
        click.option("--canary", type=click.IntRange(0), default=1, show_default=True, help="Clusters in wave 0."),
        click.option(
            "--waves",
            "percentages",
            default="",
            metavar="P1,P2,..",
            help="Then waves reaching these cumulative percentages, e.g. 25,50,100 [default: 100].",
        ),
        click.option(
            "--stage",
            "stages",
            multiple=True,
            metavar="NAME=SELECTOR",
            help="Label-based waves instead, in order, e.g. --stage dev=env=dev --stage prod=env=prod.",
        ),
        click.option("--max-concurrent-clusters", type=click.IntRange(1), default=1, show_default=True),
        click.option(
            "--max-unavailable",
            type=click.IntRange(1),
            default=1,
            show_default=True,
            help="Per cluster: nodes out of service at once (counting those already down).",
        ),
        click.option("--drain-timeout", default="10m", show_default=True, help="Per node; then the node fails."),
        click.option("--delete-emptydir-data", is_flag=True, help="Evict pods that use emptyDir volumes."),
        click.option("--evict-unmanaged-pods", is_flag=True, help="Evict pods that no controller recreates."),
        click.option(
            "--force-delete-on-timeout",
            is_flag=True,
            help="Delete pods still blocking a drain at the timeout (off: the node fails instead).",
        ),
        click.option("--soak", default="0s", show_default=True, help="Wait after each wave, clusters must stay Ready."),
        click.option(
            "--max-failed-nodes",
            type=click.IntRange(0),
            default=0,
            show_default=True,
            help="Node failures tolerated before the rollout freezes.",
        ),
        click.option(
            "--max-failed-clusters",
            type=click.IntRange(0),
            default=0,
            show_default=True,
            help="Cluster failures tolerated before the rollout freezes.",
        ),
        click.option(
            "--window",
            "windows",
            multiple=True,
            metavar="SELECTOR@DAYS@HH:MM@DURATION[@ZONE]",
            help="Maintenance window for matching clusters, e.g. 'env=prod@Sat,Sun@02:00@4h@Europe/Berlin' "
            "(DAYS may be empty for every day; ZONE is an IANA time zone, UTC when left out).",
        ),
        click.option(
            "--approve-before",
            "approvals",
            multiple=True,
            type=click.IntRange(0),
            metavar="WAVE",
            help="Wait for `flotilla upgrade approve ID --wave N` before this wave starts.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return filename_option(command)


def spec_from(params: dict[str, Any]) -> up.RolloutSpec:
    """The rollout spec of `plan`/`start`: from -f FILE, or from the options; not both (BadUsage, nothing sent)."""
    path = params.pop("path", None)
    if path is None:
        if not params["target"]:
            raise BadUsage("--to VERSION is required (or the whole rollout as -f FILE); nothing was sent")
        return build_spec(params)
    ctx = click.get_current_context()
    given = [
        param.opts[0]
        for param in ctx.command.params
        if param.name in params and ctx.get_parameter_source(param.name) is not ParameterSource.DEFAULT
    ]
    if given:
        raise BadUsage(f"-f {path} and {', '.join(given)}: give the rollout as a file or as options; nothing was sent")
    return parse_rollout(*read_text(path))


def build_spec(params: dict[str, Any]) -> up.RolloutSpec:
    """A RolloutSpec from the command line, with local checks that name the option at fault."""
    try:
        target = parse_version(params["target"])
        if target.is_pre_release and not params["allow_pre_release"]:
            raise ValueError(
                f"--to {params['target']}: a pre-release ({target.pre}), not for production; nothing was sent. "
                "Add --allow-pre-release to plan or roll it out anyway"
            )
        parse_selector(params["selector"])
        percentages = [int(p) for p in params["percentages"].split(",") if p.strip()] if params["percentages"] else []
        if any(not 0 < p <= 100 for p in percentages) or percentages != sorted(percentages):
            raise ValueError("--waves: percentages must rise and lie in 1..100, e.g. 25,50,100")
        stages = []
        for stage in params["stages"]:
            name, sep, selector = stage.partition("=")
            if not sep or not name:
                raise ValueError(f"--stage {stage!r}: use NAME=SELECTOR")
            parse_selector(selector)
            stages.append(up.LabelStage(name=name, selector=selector))
        windows = [_window(text) for text in params["windows"]]
        return up.RolloutSpec(
            target_version=params["target"],
            selector=params["selector"],
            name=params["name"],
            waves=up.WavesSpec(canary_clusters=params["canary"], percentages=percentages, stages=stages),
            max_concurrent_clusters=params["max_concurrent_clusters"],
            max_unavailable=params["max_unavailable"],
            drain=DrainOptions(
                timeout_s=parse_duration(params["drain_timeout"]),
                delete_emptydir_data=params["delete_emptydir_data"],
                evict_unmanaged_pods=params["evict_unmanaged_pods"],
                force_delete_on_timeout=params["force_delete_on_timeout"],
            ),
            soak_s=parse_duration(params["soak"]),
            failure_budget=up.FailureBudget(
                max_failed_nodes=params["max_failed_nodes"], max_failed_clusters=params["max_failed_clusters"]
            ),
            maintenance_windows=windows,
            approval_before_waves=list(params["approvals"]),
            allow_pre_release=params["allow_pre_release"],
        )
    except (ValueError, SelectorError) as exc:
        raise Failure(str(exc)) from None


def _window(text: str) -> up.MaintenanceWindow:
    """SELECTOR@DAYS@HH:MM@DURATION[@ZONE]: ZONE is an IANA time zone (default UTC), checked here."""
    usage = "use SELECTOR@DAYS@HH:MM@DURATION[@ZONE], e.g. env=prod@Sat,Sun@02:00@4h@Europe/Berlin"
    parts = text.split("@")
    if len(parts) not in (4, 5):
        raise ValueError(f"--window {text!r}: {usage}")
    selector, days, start, duration = parts[:4]
    zone = parts[4].strip() if len(parts) == 5 else "UTC"
    parse_selector(selector)
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise BadUsage(
            f"--window {text!r}: time zone {zone!r} is not an IANA time zone name (e.g. Europe/Berlin, UTC); "
            "nothing was sent"
        ) from None
    return up.MaintenanceWindow(
        selector=selector,
        days=[up.Weekday(d.strip().capitalize()[:3]) for d in days.split(",") if d.strip()],
        start=start,
        duration_s=parse_duration(duration),
        timezone=zone,
    )
