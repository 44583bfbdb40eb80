"""Kubernetes releases the orchestrator knows: a target outside them is refused as an unknown version.

The table holds the newest patch of each minor line released when this table was last updated; a
deployment adds newer ones with `FLOTILLA_UPGRADE_ORCHESTRATOR_EXTRA_VERSIONS` (comma-separated).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from flotilla_kube.versions import KubeVersion, parse_version

# minor -> newest released patch (kubernetes.io/releases; 1.32 on: the k8s.io/kubernetes tags the Go module proxy
# served on 2026-12-04).
NEWEST_PATCH: dict[tuple[int, int], int] = {
    (1, 23): 17,
    (1, 24): 17,
    (1, 25): 16,
    (1, 26): 15,
    (1, 27): 16,
    (1, 28): 15,
    (1, 29): 15,
    (1, 30): 14,
    (1, 31): 13,
    (1, 32): 13,
    (1, 33): 13,
    (1, 34): 4,
    (1, 35): 4,
    (1, 36): 3,
    (1, 37): 2,
}


@dataclass(frozen=True)
class Releases:
    """Which versions exist: the built-in table plus extra versions a deployment declares."""

    newest_patch: dict[tuple[int, int], int] = field(default_factory=lambda: dict(NEWEST_PATCH))
    extra: frozenset[tuple[int, int, int]] = frozenset()

    @classmethod
    def with_extra(cls, versions: Iterable[str]) -> Releases:
        """Add versions such as `v1.35.0`; raises ValueError naming a malformed one."""
        parsed = [parse_version(v) for v in versions if v.strip()]
        return cls(extra=frozenset((v.major, v.minor, v.patch) for v in parsed))

    def known(self, version: KubeVersion) -> bool:
        if (version.major, version.minor, version.patch) in self.extra:
            return True
        newest = self.newest_patch.get(version.minor_version)
        return newest is not None and version.patch <= newest

    def why_unknown(self, version: KubeVersion) -> str:
        newest = self.newest_patch.get(version.minor_version)
        if newest is None:
            lines = sorted(self.newest_patch)
            return (
                f"{version} is not a Kubernetes release known here (minor lines v{lines[0][0]}.{lines[0][1]} to "
                f"v{lines[-1][0]}.{lines[-1][1]}); declare it with FLOTILLA_UPGRADE_ORCHESTRATOR_EXTRA_VERSIONS"
            )
        return (
            f"{version} is not a released patch: v{version.major}.{version.minor} goes up to "
            f"v{version.major}.{version.minor}.{newest} here"
        )
