"""Terminal output shared by every command.

stdout carries results (one JSON object with `--json`); progress bars and notes go to stderr so
that `sase-deploy ... --json | jq` always parses.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

T = TypeVar("T")

stderr = Console(stderr=True)
stdout = Console()


def progress() -> Progress:
    """A rich progress bar on stderr, disabled when stderr is not a terminal.

    (An enabled transient bar still ends with a newline on a non-terminal, which would break the
    one-line error contract of scripts reading stderr.)
    """
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr,
        transient=True,
        disable=not stderr.is_terminal,
    )


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    with progress() as bar:
        yield from bar.track(items, description=description, total=total)


def emit_json(obj: Any) -> None:
    """Write one JSON object on stdout."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    sys.stdout.flush()


def note(message: str) -> None:
    stderr.print(message, highlight=False)
