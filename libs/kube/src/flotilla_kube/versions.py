"""Kubernetes versions (`v1.30.4`, `v1.31.0-rc.1`, `1.29.6+k3s1`) parsed into values ordered as semver orders them.

Precedence is Semantic Versioning 2.0.0 §11, the order Kubernetes itself uses (k8s.io/apimachinery
`version.ParseSemantic`): major, minor, patch numerically; a pre-release sorts below its release
(`v1.31.0-rc.1 < v1.31.0`); pre-releases compare identifier by identifier, numeric ones numerically and below
alphanumeric ones (ASCII), a shorter list below a longer one it prefixes (`alpha < alpha.1 < beta < rc.1 <
rc.2`); build metadata (`+k3s1`) does not count at all: `v1.29.6+k3s1 == v1.29.6` (equal precedence, equal
hash) but both keep their text for display.

A vendor suffix written with a dash (`v1.30.4-eks-1`, `v1.30.4-gke.1000`) is a pre-release to semver and to
Kubernetes' own parser, so it sorts below `v1.30.4`; Flotilla upgrades kubeadm clusters, whose versions have
no such suffix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_VERSION_RE = re.compile(
    r"^v?(?P<major>0|[1-9][0-9]*)\.(?P<minor>0|[1-9][0-9]*)\.(?P<patch>0|[1-9][0-9]*)"
    r"(?:-(?P<pre>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?(?:\+(?P<build>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)

# An identifier's sort key: numeric ones first (by value), then alphanumeric ones (by ASCII).
_Ident = tuple[int, int, str]
# A release sorts above every pre-release of the same major.minor.patch.
_RELEASE: tuple[_Ident, ...] = ((2, 0, ""),)


def _ident_key(ident: str) -> _Ident:
    return (0, int(ident), "") if ident.isdigit() else (1, 0, ident)


@dataclass(frozen=True, eq=False)
class KubeVersion:
    """A version with semver precedence: compare with <, ==, sort, hash; `str()` gives `vX.Y.Z[-pre][+build]`."""

    major: int
    minor: int
    patch: int
    pre: str = ""  # the pre-release without its dash: "rc.1"; empty for a release
    build: str = ""  # the build metadata without its plus: "k3s1"; ignored for precedence
    _key: tuple[int, int, int, tuple[_Ident, ...]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        pre = tuple(_ident_key(i) for i in self.pre.split(".")) if self.pre else _RELEASE
        object.__setattr__(self, "_key", (self.major, self.minor, self.patch, pre))

    @property
    def precedence(self) -> tuple[int, int, int, tuple[_Ident, ...]]:
        """What ordering compares: numbers and pre-release identifiers, never build metadata."""
        return self._key

    @property
    def minor_version(self) -> tuple[int, int]:
        return (self.major, self.minor)

    @property
    def is_pre_release(self) -> bool:
        return bool(self.pre)

    @property
    def is_release_candidate(self) -> bool:
        """A pre-release kubeadm calls a release candidate (its PreRelease starts with `rc`)."""
        return self.pre.startswith("rc")

    @property
    def release(self) -> KubeVersion:
        """The release this is a pre-release (or a build) of: `v1.31.0-rc.1+abc` -> `v1.31.0`."""
        return KubeVersion(self.major, self.minor, self.patch)

    @property
    def suffix(self) -> str:
        """The text after the patch number, as written: `-rc.1+abc`."""
        return (f"-{self.pre}" if self.pre else "") + (f"+{self.build}" if self.build else "")

    def __str__(self) -> str:
        return f"v{self.major}.{self.minor}.{self.patch}{self.suffix}"

    def __eq__(self, other: object) -> bool:
        return self._key == other._key if isinstance(other, KubeVersion) else NotImplemented

    def __hash__(self) -> int:
        return hash(self._key)

    def __lt__(self, other: KubeVersion) -> bool:
        return self._cmp(other) < 0

    def __le__(self, other: KubeVersion) -> bool:
        return self._cmp(other) <= 0

    def __gt__(self, other: KubeVersion) -> bool:
        return self._cmp(other) > 0

    def __ge__(self, other: KubeVersion) -> bool:
        return self._cmp(other) >= 0

    def _cmp(self, other: KubeVersion) -> int:
        if not isinstance(other, KubeVersion):
            raise TypeError(f"cannot compare KubeVersion with {type(other).__name__}")
        a, b = self._key, other._key
        return (a > b) - (a < b)

    def minors_behind(self, other: KubeVersion) -> int:
        """How many minor versions `self` is older than `other` (negative when newer); majors must match."""
        if self.major != other.major:
            raise ValueError(f"cannot compare minors across major versions: {self} and {other}")
        return other.minor - self.minor


def parse_version(text: str) -> KubeVersion:
    """`v1.30.4` / `1.30.4` / `v1.31.0-rc.1` / `1.29.6+k3s1` -> KubeVersion; ValueError with the accepted form
    otherwise (semver: no empty identifiers, no leading zeros in numeric ones)."""
    match = _VERSION_RE.match(text.strip())
    pre = (match["pre"] or "") if match else ""
    if match is None or any(len(i) > 1 and i.isdigit() and i.startswith("0") for i in pre.split(".")):
        raise ValueError(
            f"{text!r} is not a Kubernetes version; expected vMAJOR.MINOR.PATCH such as v1.30.4, optionally with a "
            "pre-release (v1.31.0-rc.1) or build metadata (+k3s1)"
        )
    return KubeVersion(int(match["major"]), int(match["minor"]), int(match["patch"]), pre, match["build"] or "")
