"""The same inputs give the same artifacts: byte-identical ONNX (export, fuse, convert, calibrate),
TensorRT calibration cache and bundle files, and JSON manifests equal but for the fields below.

Run twice into two folders (`run1`, `run2`); paths inside the outputs name their folder, so
`<out>` replaces it before comparing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sase_deploy.models.digits import digits_checkpoint_file

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# JSON keys whose values legitimately change from run to run, and why.
VOLATILE = {
    "created_utc": "the one timestamp (build manifests; report.json)",
    "timings_s": "stage durations (export manifest, NAME.calib.json)",
    "build_seconds": "builder wall time (build manifest)",
}
# Engines only: TensorRT-RTX engines of one request differ in a few bytes (same size) per build.
VOLATILE_ENGINE = {"sha256": "TensorRT-RTX engine bytes are not reproducible"}
ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


def normalised(path: Path, folder: Path, volatile: dict[str, str] = VOLATILE) -> Any:
    """The JSON at `path` with `volatile` keys dropped (at any depth) and `folder` as <out>."""

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if k not in volatile}
        if isinstance(value, list):
            return [clean(v) for v in value]
        if isinstance(value, str):
            return value.replace(str(folder), "<out>")
        return value

    return clean(json.loads(path.read_text()))


def timestamp_keys(value: Any, key: str = "") -> set[str]:
    """Keys (at any depth) whose string value looks like a date-time."""
    if isinstance(value, dict):
        return set().union(*(timestamp_keys(v, k) for k, v in value.items()))
    if isinstance(value, list):
        return set().union(*(timestamp_keys(v, key) for v in value))
    return {key} if isinstance(value, str) and ISO_TIME.search(value) else set()


def assert_same_files(run1: Path, run2: Path, names: list[str]) -> None:
    for name in names:
        assert (run1 / name).read_bytes() == (run2 / name).read_bytes(), f"{name} differs"


def assert_same_json(
    run1: Path, run2: Path, names: list[str], volatile: dict[str, str] = VOLATILE
) -> None:
    for name in names:
        first, second = (normalised(run / name, run, volatile) for run in (run1, run2))
        assert first == second, f"{name} differs beyond {sorted(volatile)}"
        stamps = timestamp_keys(json.loads((run1 / name).read_text()))
        assert stamps <= {"created_utc"}, f"{name}: timestamps in {stamps}"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An unfused SASE digits export (fuse has work to do) and 128 calibration samples."""
    from sase_deploy.export import export_model
    from sase_deploy.models.digits_data import write_digits_npz

    folder = tmp_path_factory.mktemp("inputs")
    unfused = folder / "sase.onnx"
    export_model(
        "sase_resnet_digits",
        unfused,
        checkpoint=digits_checkpoint_file("sase_resnet_digits"),
        dynamic_batch=True,
        fuse=False,
    )
    return {
        "unfused": unfused,
        "data": write_digits_npz(folder / "calib.npz", "calibration", n=128),
    }


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The trained SE digits model exported twice, into run1/ and run2/."""
    from sase_deploy.export import export_model

    folder = tmp_path_factory.mktemp("export")
    runs = folder / "run1", folder / "run2"
    for run in runs:
        export_model(
            "se_resnet_digits",
            run / "m.onnx",
            checkpoint=digits_checkpoint_file("se_resnet_digits"),
            dynamic_batch=True,
        )
    return runs


def test_export_is_reproducible(exports: tuple[Path, Path]) -> None:
    run1, run2 = exports
    assert_same_files(run1, run2, ["m.onnx"])
    assert_same_json(run1, run2, ["m.manifest.json"])
    manifest = json.loads((run1 / "m.manifest.json").read_text())
    assert set(manifest["timings_s"]) >= {"export", "parity"}  # what VOLATILE drops is real


def test_fuse_is_reproducible(run_cli, inputs: dict[str, Path], tmp_path: Path) -> None:
    runs = tmp_path / "run1", tmp_path / "run2"
    for run in runs:
        result = run_cli(
            "fuse",
            str(inputs["unfused"]),
            "-o",
            str(run / "f.onnx"),
            "--report",
            str(run / "fuse.json"),
        )
        assert result.code == 0, result.stderr
    assert_same_files(*runs, ["f.onnx"])
    assert_same_json(*runs, ["fuse.json"])
    report = json.loads((runs[0] / "fuse.json").read_text())
    assert report["blocks_found"] and report["nodes_after"] != report["nodes_before"]


def test_calibrate_and_convert_are_reproducible(
    run_cli, exports: tuple[Path, Path], inputs: dict[str, Path], tmp_path: Path
) -> None:
    model = exports[0] / "m.onnx"
    runs = tmp_path / "run1", tmp_path / "run2"
    for run in runs:
        result = run_cli(
            "calibrate",
            str(model),
            "--data",
            str(inputs["data"]),
            "--samples",
            "64",
            "-o",
            str(run),
        )
        assert result.code == 0, result.stderr
        result = run_cli(
            "convert",
            str(model),
            "-o",
            str(run / "m.fp16.onnx"),
            "--calib-json",
            str(run / "m.calib.json"),
        )
        assert result.code == 0, result.stderr
    assert_same_files(*runs, ["m.int8.onnx", "m.calib.cache", "m.fp16.onnx"])
    assert_same_json(*runs, ["m.calib.json"])


def test_calibrate_is_reproducible_across_hash_seeds(
    exports: tuple[Path, Path], inputs: dict[str, Path], tmp_path: Path
) -> None:
    """Set and dict order must not leak into artifacts: Python randomises str hashes per
    process (PYTHONHASHSEED), which two in-process runs cannot show."""
    runs = tmp_path / "seed1", tmp_path / "seed2"
    for seed, run in zip(("1", "2"), runs, strict=True):
        proc = subprocess.run(
            [sys.executable, "-m", "sase_deploy.cli", "calibrate", str(exports[0] / "m.onnx"),
             "--data", str(inputs["data"]), "--samples", "32", "-o", str(run)],
            capture_output=True, text=True, timeout=300,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    assert_same_files(*runs, ["m.int8.onnx", "m.calib.cache"])
    # as text, not as dicts: key order is part of the bytes that engine cache keys hash
    texts = [json.dumps(normalised(run / "m.calib.json", run)) for run in runs]
    assert texts[0] == texts[1]


@pytest.mark.parametrize(
    ("target", "precision"),
    [
        pytest.param("l4", "fp16", marks=pytest.mark.rtx),
        pytest.param("l4", "int8", marks=pytest.mark.rtx),
        ("orin-nano", "int8"),  # a bundle: every file, byte for byte
    ],
)
def test_build_manifests_are_reproducible(
    run_cli,
    exports: tuple[Path, Path],
    inputs: dict[str, Path],
    tmp_path: Path,
    target: str,
    precision: str,
) -> None:
    model = exports[0] / "m.onnx"
    runs = tmp_path / "run1", tmp_path / "run2"
    for run in runs:
        result = run_cli(
            "build",
            str(model),
            "-t",
            target,
            "--precision",
            precision,
            "--data",
            str(inputs["data"]),
            "--samples",
            "64",
            "-o",
            str(run),
        )
        assert result.code == 0, result.stderr
    manifest = f"{target}/m.{precision}.manifest.json"
    first = json.loads((runs[0] / manifest).read_text())
    if first["backend"] == "bundle":
        bundle = Path(first["artifact"]).relative_to(runs[0])
        files = sorted(str(p.relative_to(runs[0])) for p in (runs[0] / bundle).rglob("*"))
        assert_same_files(*runs, [f for f in files if not f.endswith(".json")])
        assert_same_json(*runs, [manifest, *(f for f in files if f.endswith(".json"))])
    else:
        assert_same_json(*runs, [manifest], {**VOLATILE, **VOLATILE_ENGINE})
    made = first["built_onnx"]["path"]  # the FP16 / Q-DQ graph build made first
    if made != str(model):
        assert_same_files(*runs, [str(Path(made).relative_to(runs[0]))])
