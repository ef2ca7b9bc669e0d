"""`StageTimer`: wall time per named stage, shared by export and the precision stages."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

StageCallback = Callable[[str], None]


class StageTimer:
    """Seconds per stage in `timings`, in the order the stages ran.

    Args:
        on_stage: called with a stage's name as it starts (progress bars); None for quiet.
        suffix: appended to each name for its key in `timings` (the precision stages' records
            name theirs `load_s`, `quantize_s`, ...; export's manifest uses the bare names).
    """

    def __init__(self, on_stage: StageCallback | None = None, *, suffix: str = "") -> None:
        self.timings: dict[str, float] = {}
        self._on_stage = on_stage
        self._suffix = suffix
        self._start = time.perf_counter()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the `with` body as stage `name` (not recorded when the body raises)."""
        if self._on_stage is not None:
            self._on_stage(name)
        start = time.perf_counter()
        yield
        self.timings[name + self._suffix] = time.perf_counter() - start

    def total(self, name: str = "total") -> float:
        """Record and return the seconds since the timer was made, as stage `name`."""
        seconds = time.perf_counter() - self._start
        self.timings[name + self._suffix] = seconds
        return seconds


def rounded(timings: dict[str, float]) -> dict[str, float]:
    """`timings` to the millisecond, as records and JSON summaries show them."""
    return {name: round(seconds, 3) for name, seconds in timings.items()}
