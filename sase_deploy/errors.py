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
