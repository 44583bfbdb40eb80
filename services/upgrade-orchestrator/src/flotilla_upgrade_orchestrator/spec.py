"""Checks a RolloutSpec before anything is planned: target, selectors, waves, windows, approvals.

Bad input is refused here with a stable code and a reason, before anything moves.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from flotilla_contracts.errors import ErrorCode
from flotilla_contracts.v1.upgrade import RolloutSpec
from flotilla_kube.selectors import Selector, SelectorError, parse_selector
from flotilla_kube.versions import KubeVersion
from flotilla_upgrade_orchestrator import skew
from flotilla_upgrade_orchestrator.releases import Releases
from flotilla_upgrade_orchestrator.windows import Window, WindowError, parse_windows


class SpecError(ValueError):
    """A spec that cannot be planned: the code clients branch on, the reason, the field."""

    def __init__(self, code: ErrorCode, message: str, field: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


@dataclass(frozen=True)
class CheckedSpec:
    """A spec whose parts parsed: the target version, the selectors and the windows."""

    spec: RolloutSpec
    target: KubeVersion
    selector: Selector
    stages: tuple[tuple[str, Selector], ...]
    windows: tuple[Window, ...]

    @property
    def wave_count(self) -> int:
        waves = self.spec.waves
        if self.stages:
            return len(self.stages)
        first = 1 if waves.canary_clusters > 0 else 0
        return first + (len(waves.percentages) if waves.percentages else 1)


def _selector(text: str, field: str) -> Selector:
    try:
        return parse_selector(text)
    except SelectorError as exc:
        raise SpecError(ErrorCode.INVALID_SELECTOR, f"{field}: {exc}", field) from None


# The longest each duration of a spec may be: the contract bounds them below only, and a deadline further away
# than any date (1e12 s) would fail every tick of the rollout instead of this one request.
DURATION_LIMITS_S = {
    "health_gates.verify_timeout_s": 86400.0,
    "drain.eviction_retry_s": 3600.0,
    "drain.pod_grace_period_s": 86400.0,
}


def _check_durations(spec: RolloutSpec) -> None:
    given = {
        "health_gates.verify_timeout_s": spec.health_gates.verify_timeout_s,
        "drain.eviction_retry_s": spec.drain.eviction_retry_s,
        "drain.pod_grace_period_s": spec.drain.pod_grace_period_s,
    }
    for field, value in given.items():
        limit = DURATION_LIMITS_S[field]
        if value is not None and value > limit:
            raise SpecError(
                ErrorCode.INVALID_FIELD, f"{field}: {value:g} is out of range: at most {limit:g} seconds", field
            )


def check_spec(spec: RolloutSpec, releases: Releases) -> CheckedSpec:
    """Parse and check everything that does not depend on the fleet; raise SpecError on the first problem."""
    _check_durations(spec)
    target = skew.parse(spec.target_version)
    if target is None:
        raise SpecError(
            ErrorCode.UNKNOWN_VERSION, f"{spec.target_version!r} is not a Kubernetes version", "target_version"
        )
    if not releases.known(target):
        raise SpecError(ErrorCode.UNKNOWN_VERSION, releases.why_unknown(target), "target_version")
    if target.is_pre_release and not spec.allow_pre_release:
        raise SpecError(
            ErrorCode.PRE_RELEASE_NOT_ALLOWED,
            f"{target} is a pre-release ({target.pre}), not for production: nothing was started. To roll it out "
            "anyway, say so explicitly: `flotilla upgrade plan/start --allow-pre-release` (allow_pre_release: true)",
            "allow_pre_release",
        )
    selector = _selector(spec.selector, "selector")
    waves = spec.waves
    stages: list[tuple[str, Selector]] = []
    if waves.stages:
        if waves.percentages:
            raise SpecError(ErrorCode.INVALID_PLAN, "waves: give label stages or percentages, not both", "waves")
        names = [stage.name for stage in waves.stages]
        if len(set(names)) != len(names):
            raise SpecError(ErrorCode.INVALID_PLAN, "waves.stages: stage names must be unique", "waves.stages")
        for i, stage in enumerate(waves.stages):
            stages.append((stage.name or f"stage-{i}", _selector(stage.selector, f"waves.stages[{i}].selector")))
    if waves.percentages:
        pct = waves.percentages
        if any(p > 100 or p < 1 for p in pct):
            raise SpecError(ErrorCode.INVALID_PLAN, "waves.percentages: each must be 1 to 100", "waves.percentages")
        if any(b <= a for a, b in itertools.pairwise(pct)):
            raise SpecError(
                ErrorCode.INVALID_PLAN,
                f"waves.percentages {pct} must rise: each is the cumulative share of clusters done after the wave",
                "waves.percentages",
            )
        if pct[-1] != 100:
            raise SpecError(ErrorCode.INVALID_PLAN, f"waves.percentages {pct} must end at 100", "waves.percentages")
    if spec.max_unavailable < 1:
        raise SpecError(ErrorCode.INVALID_PLAN, "max_unavailable must be at least 1 node", "max_unavailable")
    if spec.max_concurrent_clusters < 1:
        raise SpecError(ErrorCode.INVALID_PLAN, "max_concurrent_clusters must be at least 1", "max_concurrent_clusters")
    try:
        windows = parse_windows(spec.maintenance_windows)
    except WindowError as exc:
        code = ErrorCode.INVALID_SELECTOR if "selector" in str(exc) else ErrorCode.INVALID_PLAN
        raise SpecError(code, str(exc), "maintenance_windows") from None
    checked = CheckedSpec(spec, target, selector, tuple(stages), tuple(windows))
    for index in spec.approval_before_waves:
        if index >= checked.wave_count:
            raise SpecError(
                ErrorCode.INVALID_PLAN,
                f"approval_before_waves: wave {index} does not exist (the spec makes {checked.wave_count} waves, "
                "numbered from 0)",
                "approval_before_waves",
            )
    return checked
