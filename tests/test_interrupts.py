"""SIGKILL in the middle of export, calibrate and build: the artifact already there survives.

Each test writes over a good artifact from an earlier run with different content, kills the CLI
(a real process) at several points, and checks that every artifact is either the old file, byte
for byte, or the complete new one (never half-written). One kill lands in the window that
matters: a wrapper slows `os.replace` into the output folder (a slow disk), announces it with a
marker file, and is killed there, with its temp file written and not yet renamed. A normal
re-run then leaves no stray temp files or staging folders: writers sweep those of dead processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import pytest
from helpers import DigitsExports, copy_export

from sase_deploy.models.digits import digits_checkpoint_file

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]
STEM = "se_resnet_digits"  # the artifacts' names start with the model file's

# The CLI with os.replace into $SLOW_DIR held up (after writing $MARKER) until it is killed.
SLOW_RENAME = """
import os, sys, time
from pathlib import Path
_replace, _slow = os.replace, os.path.realpath(os.environ["SLOW_DIR"])
def replace(src, dst, *args, **kwargs):
    if os.path.realpath(os.path.dirname(os.path.abspath(dst))).startswith(_slow):
        Path(os.environ["MARKER"]).write_text(str(dst))
        time.sleep(120)
    return _replace(src, dst, *args, **kwargs)
os.replace = replace
from sase_deploy.cli import main
main(sys.argv[1:])
"""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def strays(folder: Path) -> list[str]:
    """Temp files (`.x.tmp`, `.x.probe`) and staging folders (`.sase-*`) under `folder`."""
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob(".*")
        if p.name.endswith((".tmp", ".probe")) or (p.is_dir() and p.name.startswith(".sase-"))
    )


def start(args: list[str], cwd: Path, slow_dir: Path | None = None) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    if slow_dir is None:
        command = [sys.executable, "-m", "sase_deploy.cli", *args]
    else:
        command = [sys.executable, "-c", SLOW_RENAME, *args]
        env.update(SLOW_DIR=str(slow_dir), MARKER=str(cwd / "renaming"))
    return subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def kill_when(
    proc: subprocess.Popen[bytes], ready: Callable[[], bool], timeout: float = 60
) -> bool:
    """SIGKILL `proc` as soon as `ready()`; False if it finished first."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if ready():
            proc.kill()  # SIGKILL: no finally blocks, no atexit
            proc.wait()
            return True
        assert time.monotonic() < deadline, "the command neither finished nor got ready"
        time.sleep(0.005)
    return False


def after(seconds: float) -> Callable[[], bool]:
    start_time = time.monotonic()
    return lambda: time.monotonic() - start_time >= seconds


def appears(folder: Path, pattern: str) -> Callable[[], bool]:
    return lambda: any(folder.glob(pattern))


def interrupt_at_each_point(
    args: list[str], cwd: Path, out: Path, stray_pattern: str, delays: tuple[float, ...]
) -> None:
    """Kill `args` (writing over the artifacts in `out`) at several points; after each kill,
    every artifact is the old file or a complete new one, never half-written.

    Plain runs are killed after each of `delays` (a run that finished first does not count);
    the old artifacts are put back after each. Then two runs with their renames into `out` held
    up are killed: when a temp file matching `stray_pattern` appears, and inside the rename.
    Those two must leave the old artifacts exactly; the last leaves its temp file behind.
    """
    old = snapshot(out)
    backup = cwd / "backup"
    shutil.copytree(out, backup)
    for delay in delays:
        if kill_when(start(args, cwd), after(delay)):
            check_complete(out, old)
        shutil.rmtree(out)
        shutil.copytree(backup, out)
    marker = cwd / "renaming"
    for ready in (appears(out, stray_pattern), marker.exists):
        proc = start(args, cwd, slow_dir=out)
        assert kill_when(proc, ready), proc.stderr.read().decode() if proc.stderr else ""
        assert snapshot(out) == old
    assert strays(out), "the held-up run left no temp file: the kill came too late"


def snapshot(out: Path) -> dict[str, str]:
    """sha256 of every artifact (no temp or lock files) in `out`."""
    return {
        str(p.relative_to(out)): sha256(p)
        for p in sorted(out.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(out).parts)
    }


def check_complete(out: Path, old: dict[str, str]) -> None:
    """Each artifact in `out` is the old file or a whole new one (it loads; an engine matches
    the sha256 its new manifest records)."""
    state = snapshot(out)
    assert set(state) == set(old), state
    for name, digest in state.items():
        if digest == old[name]:
            continue
        path = out / name
        if path.suffix == ".onnx":
            onnx.checker.check_model(onnx.load(str(path)))
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".cache":
            from sase_deploy.calibration.trt_cache import read_cache

            assert read_cache(path)
        else:
            manifest = json.loads(path.with_name(path.stem + ".manifest.json").read_text())
            assert manifest["sha256"] == digest, f"{name} is half-written"


def rerun(args: list[str], cwd: Path, out: Path) -> None:
    """A normal run to the end: it succeeds and sweeps the temp files of the killed runs."""
    done = subprocess.run(
        [sys.executable, "-m", "sase_deploy.cli", *args], cwd=cwd, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert not strays(out), strays(out)


@pytest.fixture(scope="module")
def digits(
    tmp_path_factory: pytest.TempPathFactory, digits_exports: DigitsExports
) -> dict[str, Path]:
    """A private copy of the trained digits model (dynamic batch: the session's export; a copy,
    as the killed runs may leave files anywhere) and 128 calibration samples."""
    from sase_deploy.models.digits_data import write_digits_npz

    folder = tmp_path_factory.mktemp("digits")
    onnx_path = copy_export(digits_exports.get(), folder)
    data = write_digits_npz(folder / "calib.npz", "calibration", n=128)
    return {"onnx": onnx_path, "data": Path(data)}


def test_sigkill_during_export_keeps_the_previous_model(
    digits_exports: DigitsExports, tmp_path: Path
) -> None:
    # the previous export: a fixed batch (the new one has a dynamic batch)
    out = tmp_path / "out"
    model = copy_export(digits_exports.get(batch=1), out)
    old = snapshot(out)
    assert set(old) == {"se_resnet_digits.onnx", "se_resnet_digits.manifest.json"}
    args = [
        "export",
        "se_resnet_digits",
        "-c",
        str(digits_checkpoint_file("se_resnet_digits")),
        "--dynamic-batch",
        "-o",
        str(model),
    ]
    interrupt_at_each_point(args, tmp_path, out, ".sase-export.*", delays=(1.0, 3.0))
    rerun(args, tmp_path, out)
    manifest = json.loads((out / "se_resnet_digits.manifest.json").read_text())
    assert manifest["sha256"] == sha256(model) != old["se_resnet_digits.onnx"]
    onnx.checker.check_model(onnx.load(str(model)))


def test_sigkill_during_calibrate_keeps_the_previous_calibration(
    digits: dict[str, Path], tmp_path: Path
) -> None:
    from sase_deploy.calibration import calibrate_onnx

    out = tmp_path / "out"
    # the previous calibration: min/max ranges (the new one: percentile)
    calibrate_onnx(digits["onnx"], str(digits["data"]), out, method="minmax", samples=64)
    old = snapshot(out)
    assert set(old) == {f"{STEM}.int8.onnx", f"{STEM}.calib.cache", f"{STEM}.calib.json"}
    args = [
        "calibrate",
        str(digits["onnx"]),
        "--data",
        str(digits["data"]),
        "--samples",
        "64",
        "-o",
        str(out),
    ]
    interrupt_at_each_point(args, tmp_path, out, ".sase-export.*", delays=(0.3, 0.8, 1.2))
    rerun(args, tmp_path, out)
    new = snapshot(out)
    assert all(new[name] != old[name] for name in old)
    assert json.loads((out / f"{STEM}.calib.json").read_text())["method"] == "percentile"
    onnx.checker.check_model(onnx.load(str(out / f"{STEM}.int8.onnx")))


def test_sigkill_during_build_keeps_the_previous_engine(
    digits: dict[str, Path], tmp_path: Path, rtx: Any
) -> None:
    from sase_deploy.engines.build import build
    from sase_deploy.engines.request import BuildRequest

    backend = "tensorrt-rtx" if rtx.installed else "onnxruntime"
    out = tmp_path / "out"
    # the previous build: batch profile 1:4:4 (the new one: 1:8:8, another cache key)
    build(BuildRequest(digits["onnx"], "l4", out, backend=backend, batch=(1, 4, 4)))
    old = snapshot(out / "l4")
    artifact = f"{STEM}.fp32.engine" if backend == "tensorrt-rtx" else f"{STEM}.fp32.onnx"
    assert set(old) == {artifact, f"{STEM}.fp32.manifest.json"}
    args = [
        "build",
        str(digits["onnx"]),
        "-t",
        "l4",
        "--backend",
        backend,
        "--batch",
        "1:8:8",
        "-o",
        str(out),
    ]
    interrupt_at_each_point(args, tmp_path, out / "l4", f".{STEM}.fp32.*.tmp", delays=(0.1, 0.2))
    rerun(args, tmp_path, out)
    manifest = json.loads((out / f"l4/{STEM}.fp32.manifest.json").read_text())
    assert manifest["sha256"] == sha256(out / "l4" / artifact)
    assert manifest["profile"]["x"][2][0] == 8
