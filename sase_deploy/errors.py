"""The two exception roots.

`UserError` is bad input: a missing file, an unknown model, a wrong shape. The CLI prints its
message as one line on stderr and exits 2. `ParityError` is a numerical tolerance failure
(exit 1). Anything else is a bug in sase-deploy and keeps its traceback.
"""

from __future__ import annotations


class SaseDeployError(Exception):
    """Base of the errors sase-deploy raises on purpose."""


class UserError(SaseDeployError):
    """Bad input. The message says what is wrong and how to fix it, in one line."""

    exit_code = 2


class ParityError(SaseDeployError):
    """An artifact does not match its reference within tolerance."""

    exit_code = 1

    def __init__(self, message: str, details: dict | None = None) -> None:
        super().__init__(message)
        self.details = details or {}


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first non-empty line of an exception's message (its type name when it has none),
    cut to `limit` characters: what a one-line error message quotes from a library error."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0][:limit] if lines else type(exc).__name__
