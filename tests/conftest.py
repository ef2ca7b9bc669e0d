"""Shared fixtures: the CLI run in-process, the digits exports of the session, and the
hardware markers (tensorrt, cuda, rtx) skipped here, with what is missing, not in each test."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

import pytest
from helpers import DigitsExports

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


@pytest.fixture(scope="session")
def digits_exports(tmp_path_factory: pytest.TempPathFactory) -> DigitsExports:
    """The trained digits models, each variant exported once for the whole session (an export
    takes ~10 s on 2 cores). Shared files: copy them (helpers.copy_export) to change them."""
    return DigitsExports(tmp_path_factory.mktemp("digits_exports"))


@pytest.fixture(scope="session")
def rtx() -> Any:
    """The TensorRT-RTX flavour as installed here (it builds engines without a GPU)."""
    from sase_deploy.engines.flavours import find_flavour

    return find_flavour("tensorrt-rtx")


# ---- hardware markers ------------------------------------------------------------------------


@functools.cache
def _no_gpu() -> str | None:
    from sase_deploy.engines.targets import local_target

    return None if local_target() is not None else "no NVIDIA GPU on this machine (nvidia-smi)"


@functools.cache
def _missing(marker: str) -> str | None:
    """What this machine lacks for tests marked `marker`, or None when it has it all."""
    from sase_deploy.engines.flavours import find_flavour

    flavour = find_flavour("tensorrt-rtx")
    no_rtx = None if flavour.installed else f"TensorRT-RTX is not installed ({flavour.reason})"
    if marker == "rtx":
        return no_rtx
    if marker == "tensorrt":
        return _no_gpu() or no_rtx
    if marker == "cuda":
        from sase_deploy.engines.doctor import cuda_runs_here

        ok, why = cuda_runs_here()
        return None if ok else why
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip a test whose hardware marker names something this machine lacks, saying what."""
    for marker in ("rtx", "tensorrt", "cuda"):
        if item.get_closest_marker(marker) is not None and (why := _missing(marker)):
            pytest.skip(f"@{marker}: {why}")
