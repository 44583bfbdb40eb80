"""Kubernetes versions (`v1.30.4`, `1.29.6+k3s1`) parsed into comparable values."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_VERSION_RE = re.compile(
    r"^v?(?P<major>0|[1-9][0-9]*)\.(?P<minor>0|[1-9][0-9]*)\.(?P<patch>0|[1-9][0-9]*)"
    r"(?P<pre>-[0-9A-Za-z.-]+)?(?P<build>\+[0-9A-Za-z.-]+)?$"
)


@dataclass(frozen=True, order=True)
class KubeVersion:
    """Ordered by major, minor, patch; the pre-release/build suffix is kept for display only."""

    major: int
    minor: int
    patch: int
    suffix: str = field(default="", compare=False)

    @property
    def minor_version(self) -> tuple[int, int]:
        return (self.major, self.minor)

    def __str__(self) -> str:
        return f"v{self.major}.{self.minor}.{self.patch}{self.suffix}"

    def minors_behind(self, other: KubeVersion) -> int:
        """How many minor versions `self` is older than `other` (negative when newer); majors must match."""
        if self.major != other.major:
            raise ValueError(f"cannot compare minors across major versions: {self} and {other}")
        return other.minor - self.minor


def parse_version(text: str) -> KubeVersion:
    """`v1.30.4` / `1.30.4` / `v1.30.4-eks-1` -> KubeVersion; ValueError with the accepted form otherwise."""
    match = _VERSION_RE.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a Kubernetes version; expected vMAJOR.MINOR.PATCH such as v1.30.4")
    return KubeVersion(
        int(match["major"]), int(match["minor"]), int(match["patch"]), (match["pre"] or "") + (match["build"] or "")
    )
