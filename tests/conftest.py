"""Shared fixtures: run the CLI in-process and capture its streams and exit code."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from sase_deploy.cli import main


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    def _run(*args: str) -> CliResult:
        with pytest.raises(SystemExit) as exc:
            main(list(args))
        out, err = capsys.readouterr()
        code = exc.value.code
        return CliResult(int(code) if code is not None else 0, out, err)

    return _run
