"""Kubernetes releases the orchestrator knows: a target outside them is refused as an unknown version.

The table holds the newest patch of each minor line released when this table was last updated; a
deployment adds newer ones with `FLOTILLA_UPGRADE_ORCHESTRATOR_EXTRA_VERSIONS` (comma-separated, pre-releases
included: an exact `v1.39.0-beta.1` there is known).

Pre-releases: Kubernetes publishes alpha, beta and rc builds of a minor's first release only (`v1.38.0-rc.1`,
never `v1.37.3-rc.0` as a release), so a pre-release of `vX.Y.0` is known when the minor line X.Y is in the table
or is the next one after its newest (1.38 while 1.37 is the newest known): that is where release candidates live
before this table learns the GA. Any other pre-release is unknown unless declared. Knowing a pre-release does not
allow it: the spec must also say `allow_pre_release` (spec.py).
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
    extra: frozenset[KubeVersion] = frozenset()

    @classmethod
    def with_extra(cls, versions: Iterable[str]) -> Releases:
        """Add versions such as `v1.35.0` or `v1.39.0-rc.0`; raises ValueError naming a malformed one."""
        return cls(extra=frozenset(parse_version(v) for v in versions if v.strip()))

    @property
    def next_minor(self) -> tuple[int, int]:
        """The minor line after the newest known one: where the next release candidates come from."""
        major, minor = max(self.newest_patch)
        return (major, minor + 1)

    def known(self, version: KubeVersion) -> bool:
        if version in self.extra:
            return True
        if version.is_pre_release:
            lines = (*self.newest_patch, self.next_minor)
            return version.patch == 0 and version.minor_version in lines
        newest = self.newest_patch.get(version.minor_version)
        return newest is not None and version.patch <= newest

    def why_unknown(self, version: KubeVersion) -> str:
        lines = sorted(self.newest_patch)
        first, last = f"v{lines[0][0]}.{lines[0][1]}", f"v{lines[-1][0]}.{lines[-1][1]}"
        declare = "declare it with FLOTILLA_UPGRADE_ORCHESTRATOR_EXTRA_VERSIONS"
        if version.is_pre_release:
            nxt = f"v{self.next_minor[0]}.{self.next_minor[1]}"
            return (
                f"{version} is not a Kubernetes pre-release known here: pre-releases are of a minor's first release "
                f"(vX.Y.0-alpha/beta/rc) for the minor lines {first} to {last} and the next one, {nxt}; {declare}"
            )
        newest = self.newest_patch.get(version.minor_version)
        if newest is None:
            return f"{version} is not a Kubernetes release known here (minor lines {first} to {last}); {declare}"
        return (
            f"{version} is not a released patch: v{version.major}.{version.minor} goes up to "
            f"v{version.major}.{version.minor}.{newest} here"
        )
