"""Fixed-batch (static, the export default) models through calibrate/convert, and output places
that cannot be written: exit 2, one line, nothing left behind (ORT CPU only)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from helpers import DigitsExports
from torch import nn

from sase_deploy._io import atomic_path, check_writable
from sase_deploy.calibration.sources import ArraySource, FixedBatchSource
from sase_deploy.errors import UserError
from sase_deploy.models.digits_data import load_digits_split
from sase_deploy.runtime.ort import OrtRunner

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

DIGITS = "se_resnet_digits"


@pytest.fixture(scope="module")
def static_digits(digits_exports: DigitsExports) -> Path:
    """The trained digits model exported with the defaults (fixed batch 1) plus its manifest:
    the session's export, only read (the tests check nothing is written beside it)."""
    path = digits_exports.get(DIGITS, batch=1)
    dims = onnx.load(path).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].HasField("dim_value") and dims[0].dim_value == 1  # really static
    return path


@pytest.fixture(scope="module")
def digits_calib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    split = load_digits_split()
    path = tmp_path_factory.mktemp("static") / "digits_calib.npz"
    np.savez(path, x=split.x_train[:512], y=split.y_train[:512])
    return path


def digits_accuracy(path: Path) -> float:
    """Top-1 % on the digits test split, one image per run (the model's fixed batch)."""
    split = load_digits_split()
    with OrtRunner(path) as runner:
        name = runner.output_names[0]
        predicted = [
            int(runner.infer({"x": split.x_test[i : i + 1]})[name].argmax(1)[0])
            for i in range(len(split.x_test))
        ]
    return 100.0 * float(np.mean(np.array(predicted) == split.y_test))


def test_calibrate_static_export_keeps_accuracy(
    run_cli,
    static_digits: Path,
    digits_calib: Path,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    result = run_cli(
        "calibrate", str(static_digits), "--data", str(digits_calib), "-o", str(tmp_path), "--json",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    summary = result.json()
    assert summary["batch"] == 1 and summary["samples"] == 512
    assert summary["notes"] == [] and "note:" not in result.stderr  # --batch was not asked for
    int8 = Path(summary["int8_onnx"])
    reference = digits_accuracy(static_digits)
    assert reference > 95.0
    assert reference - digits_accuracy(int8) <= 0.5 + 1e-9


def test_explicit_batch_on_a_static_model_is_overridden_with_a_note(
    run_cli,
    static_digits: Path,
    digits_calib: Path,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    result = run_cli(
        "calibrate", str(static_digits), "--data", str(digits_calib), "--samples", "64",
        "--batch", "32", "--auto-keep", "0.5", "--eval-samples", "64", "-o", str(tmp_path),
        "--json",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    summary = result.json()  # stdout stays one JSON object
    assert summary["batch"] == 1 and summary["samples"] == 64
    assert summary["auto_keep"]["met"]
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "fixed batch of 1" in notes[0] and "--batch 32" in notes[0]


def test_convert_fp16_with_data_on_a_static_export(
    run_cli,
    static_digits: Path,
    digits_calib: Path,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    out = tmp_path / "digits.fp16.onnx"
    result = run_cli(
        "convert", str(static_digits), "--precision", "fp16", "--data", str(digits_calib),
        "--auto-keep", "0.1", "--eval-samples", "64", "-o", str(out), "--json",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    assert result.json()["auto_keep"]["met"]
    assert digits_accuracy(static_digits) - digits_accuracy(out) <= 0.1 + 1e-9


def _static_tiny(path: Path, batch: int) -> Path:
    torch.manual_seed(0)
    module = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10)
    )
    torch.onnx.export(
        module.eval(), (torch.randn(batch, 1, 8, 8),), str(path), opset_version=18,
        input_names=["x"], output_names=["y"], dynamo=False,
    )  # fmt: skip
    return path


def test_fixed_batch_of_four_drops_the_tail_with_a_note(run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = _static_tiny(tmp_path / "tiny4.onnx", 4)
    data = tmp_path / "ten.npy"
    np.save(data, np.random.default_rng(0).standard_normal((10, 1, 8, 8)).astype(np.float32))
    result = run_cli("calibrate", str(model), "--data", str(data), "-o", str(tmp_path), "--json")
    assert result.code == 0, result.stderr
    assert result.json()["batch"] == 4 and result.json()["samples"] == 8
    assert "using 8 of 10 samples" in result.stderr
    converted = tmp_path / "tiny4.fp16.onnx"
    result = run_cli("convert", str(model), "--data", str(data), "-o", str(converted))
    assert result.code == 0, result.stderr
    assert converted.is_file()

    np.save(data, np.zeros((3, 1, 8, 8), np.float32))  # fewer than one batch
    result = run_cli("calibrate", str(model), "--data", str(data), "-o", str(tmp_path / "x"))
    assert result.code == 2 and "fewer than the model's fixed batch of 4" in result.stderr
    assert not (tmp_path / "x").exists()


def test_fixed_batch_source_feeds_whole_batches_and_matching_labels() -> None:
    x = np.arange(10, dtype=np.float32).reshape(10, 1)
    inner = ArraySource({"x": x}, label_array=np.arange(10))
    source = FixedBatchSource(inner, 4)
    batches = [feed["x"] for feed in source.batches(16)]  # 16 is ignored
    assert [len(b) for b in batches] == [4, 4] and source.num_samples == 8
    labels = source.labels()
    assert source.dropped == 2 and labels is not None and list(labels) == list(range(8))
    assert source.describe()["fixed_batch"] == 4
    with pytest.raises(UserError, match="fewer than the model's fixed batch"):
        FixedBatchSource(inner, 11)


# --- output places that cannot be written -------------------------------------------------------


def _places(tmp_path: Path) -> dict[str, Path]:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    places = {"under_a_file": blocker / "sub"}
    if Path("/proc").is_dir():
        places["proc"] = Path("/proc/sase-deploy-nope/sub")
    return places


def _snapshot(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


def _command(name: str, model: Path, calib: Path, place: Path) -> list[str]:
    return {
        "export": ["export", DIGITS, "-o", str(place / "m.onnx")],
        "fuse": ["fuse", str(model), "-o", str(place / "m.fused.onnx")],
        "calibrate": ["calibrate", str(model), "--data", str(calib), "-o", str(place)],
        "convert": ["convert", str(model), "-o", str(place / "m.fp16.onnx")],
    }[name]


@pytest.mark.parametrize("command", ["export", "fuse", "calibrate", "convert"])
def test_unwritable_output_is_exit_2_one_line_nothing_written(
    run_cli,
    static_digits: Path,
    digits_calib: Path,
    tmp_path: Path,
    command: str,  # type: ignore[no-untyped-def]
) -> None:
    for kind, place in _places(tmp_path).items():
        before = _snapshot(tmp_path) | _snapshot(static_digits.parent)
        result = run_cli(*_command(command, static_digits, digits_calib, place))
        assert result.code == 2, (kind, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: cannot"), (kind, result.stderr)
        assert "Traceback" not in result.stderr and result.stdout == ""
        assert _snapshot(tmp_path) | _snapshot(static_digits.parent) == before, kind
        assert not place.exists()


def test_read_only_folder_is_a_user_error(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(UserError, match="Permission denied"):
            check_writable(folder / "a.onnx")
        with pytest.raises(UserError, match="Permission denied"), atomic_path(folder / "a.onnx"):
            pass
        assert not any(folder.iterdir())
    finally:
        folder.chmod(0o755)


def test_full_disk_while_writing_leaves_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "new" / "deeper" / "model.onnx"
    full = pytest.raises(UserError, match=r"No space left on device.*free some space")
    with full, atomic_path(dest) as tmp:
        tmp.write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert not (tmp_path / "new").exists()  # the folders made for it are gone too


def test_unrelated_os_errors_keep_their_type(tmp_path: Path) -> None:
    """An input file missing inside the block is not an output problem: no relabelling."""
    with pytest.raises(FileNotFoundError), atomic_path(tmp_path / "out" / "a.json"):
        (tmp_path / "missing.txt").read_text()
    assert not (tmp_path / "out").exists()


def test_destination_that_is_a_folder(tmp_path: Path) -> None:
    folder = tmp_path / "taken"
    folder.mkdir()
    with pytest.raises(UserError, match="it is a folder"), atomic_path(folder) as tmp:
        tmp.write_text("x")
    with pytest.raises(UserError, match="it is a folder"):
        check_writable(folder)
    assert set(tmp_path.rglob("*")) == {folder}
