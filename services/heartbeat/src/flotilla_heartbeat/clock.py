"""The service's clock: monotonic seconds for liveness, wall seconds for what people read."""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], tuple[float, float]]  # () -> (monotonic now, wall now); tests pass their own


class SystemClock:
    """The real clock."""

    def __call__(self) -> tuple[float, float]:
        return time.monotonic(), time.time()
