"""`StageTimer`: wall time per named stage, shared by export and the precision stages; and
`StageProgress`, the one progress callback of the long-running library functions."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from sase_deploy.vocabulary import StageCallback


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


class StageProgress(Protocol):
    """What the long-running library functions report progress through (`deploy`, `compare`,
    `calibrate_onnx`); the CLI provides the terminal and log implementations
    (`sase_deploy.console.stage_progress`), the library's default is `QUIET`.

    Stages nest: `stage` opens one inside the stage still open (if any), `advance` counts in the
    innermost open stage and `done` closes it. A stage an exception leaves open is never
    reported as finished.
    """

    def stage(self, name: str, total: int | None = None) -> None:
        """Open stage `name`; `total` is how many `advance` steps it takes (None: unknown)."""

    def advance(self, n: int = 1) -> None:
        """`n` more steps of the innermost open stage are done."""

    def done(self, skipped: str | None = None) -> None:
        """Close the innermost open stage; `skipped` says why it did no work (None: it ran)."""


class _Quiet:
    """A `StageProgress` that reports nothing."""

    def stage(self, name: str, total: int | None = None) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def done(self, skipped: str | None = None) -> None:
        pass


QUIET: StageProgress = _Quiet()


def stage_line(name: str, seconds: float, skipped: str | None = None) -> str:
    """How a finished stage is reported: `export  2.1 s` or `fp16  skipped (inputs unchanged)`."""
    return f"{name}  skipped ({skipped})" if skipped is not None else f"{name}  {seconds:.1f} s"
