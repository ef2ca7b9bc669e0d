"""Terminal output shared by every command.

stdout carries results (one JSON object with `--json`); progress bars and notes go to stderr so
that `sase-deploy ... --json | jq` always parses.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from sase_deploy._timing import QUIET, StageProgress, stage_line

T = TypeVar("T")

stderr = Console(stderr=True)
stdout = Console()


class _Count(ProgressColumn):
    """`123/541` for a task with a total; nothing (rather than `0/?`) for one without."""

    def render(self, task: Task) -> Text:
        if task.total is None:
            return Text("")
        return Text(f"{int(task.completed)}/{int(task.total)}", style="progress.download")


def progress(console: Console | None = None) -> Progress:
    """A rich progress bar on stderr (or `console`), disabled when that is not a terminal.

    (An enabled transient bar still ends with a newline on a non-terminal, which would break the
    one-line error contract of scripts reading stderr.)
    """
    console = console or stderr
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        _Count(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )


class RichStages:
    """`StageProgress` on a terminal: a live bar per open stage (a count where the stage has a
    total), and a line above the bars as each outermost stage ends, with its time or why it was
    skipped."""

    def __init__(self, bar: Progress) -> None:
        self._bar = bar
        self._open: list[tuple[str, float, TaskID]] = []

    def stage(self, name: str, total: int | None = None) -> None:
        task = self._bar.add_task("  " * len(self._open) + name, total=total)
        self._open.append((name, time.perf_counter(), task))

    def advance(self, n: int = 1) -> None:
        if self._open:
            self._bar.advance(self._open[-1][2], n)

    def done(self, skipped: str | None = None) -> None:
        if not self._open:
            return
        name, start, task = self._open.pop()
        self._bar.remove_task(task)
        if not self._open:
            line = stage_line(name, time.perf_counter() - start, skipped)
            self._bar.console.print(Text(line, style="dim" if skipped else ""), highlight=False)


class LogStages:
    """`StageProgress` for a log (stderr not a terminal): one plain line per outermost stage as
    it ends, `export  2.1 s` or `fp16  skipped (inputs unchanged)`; no escape codes."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._open: list[tuple[str, float]] = []

    def stage(self, name: str, total: int | None = None) -> None:
        self._open.append((name, time.perf_counter()))

    def advance(self, n: int = 1) -> None:
        pass

    def done(self, skipped: str | None = None) -> None:
        if not self._open:
            return
        name, start = self._open.pop()
        if not self._open:
            out = self._console.file  # looked up now: sys.stderr may have been swapped
            out.write(stage_line(name, time.perf_counter() - start, skipped) + "\n")
            out.flush()


@contextmanager
def stage_progress(log: bool = False, console: Console | None = None) -> Iterator[StageProgress]:
    """The `StageProgress` a command passes to the library: bars on a terminal.

    Args:
        log: when stderr is not a terminal, print one line per stage (`LogStages`: deploy's CI
            log). Without it a non-terminal gets nothing, so a short command's failure stays the
            one line on stderr that scripts read.
        console: where to draw (default: stderr).
    """
    console = console or stderr
    if console.is_terminal:
        with progress(console) as bar:
            yield RichStages(bar)
    elif log:
        yield LogStages(console)
    else:
        yield QUIET


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    with progress() as bar:
        yield from bar.track(items, description=description, total=total)


def emit_json(obj: Any) -> None:
    """Write one JSON object on stdout."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    sys.stdout.flush()


def note(message: str) -> None:
    stderr.print(message, highlight=False)
