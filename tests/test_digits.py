"""Digits: packaged data and fixed split, packaged checkpoints' real accuracy, reproducible
training, and the eval / calibration arrays the rest of the tool reads."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from sase_deploy.calibration.sources import array_file_source
from sase_deploy.errors import UserError
from sase_deploy.graph_io import GraphInput
from sase_deploy.models import digits, digits_data
from sase_deploy.models.digits_data import (
    TRAIN_PIXEL_MEAN,
    TRAIN_PIXEL_STD,
    DigitsSplit,
    digits_asset,
    digits_calibration_arrays,
    digits_eval_arrays,
    digits_test_set,
    evaluate_accuracy,
    load_digits_split,
    torch_predict_fn,
    train_classifier,
    write_digits_npz,
)
from sase_deploy.models.registry import get_model_spec
from sase_deploy.models.resnets import SASEBottleneck, SEBasicBlock

NAMES = ("se_resnet_digits", "sase_resnet_digits")


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def split() -> DigitsSplit:
    return load_digits_split()


def test_split_is_fixed_stratified_and_normalised(split: DigitsSplit) -> None:
    assert split.x_train.shape == (1257, 1, 8, 8) and split.x_test.shape == (540, 1, 8, 8)
    assert split.x_train.dtype == np.float32 and split.y_test.dtype == np.int64
    assert abs(float(split.x_train.mean())) < 1e-5 and abs(float(split.x_train.std()) - 1) < 1e-4
    per_class = np.bincount(split.y_test) + np.bincount(split.y_train)
    # stratified: every class keeps its 30 % share in the test split, to within one image
    assert np.abs(np.bincount(split.y_test) - 0.3 * per_class).max() <= 1
    x_test, y_test = digits_test_set()
    np.testing.assert_array_equal(x_test, split.x_test)
    np.testing.assert_array_equal(y_test, split.y_test)


def test_spec_preprocess_holds_the_training_statistics(split: DigitsSplit) -> None:
    for name in NAMES:
        spec = get_model_spec(name)
        assert spec.inputs[0].name == "x" and spec.inputs[0].shape == (1, 1, 8, 8)
        assert spec.output_names == ("logits",)
        assert spec.preprocess is not None and spec.preprocess.channel_order == "L"
        assert spec.preprocess.mean == pytest.approx((split.mean,), rel=1e-12)
        assert spec.preprocess.std == pytest.approx((split.std,), rel=1e-12)


def test_evaluate_accuracy_counts_top1(split: DigitsSplit) -> None:
    y = split.y_test

    def oracle(batch: np.ndarray) -> np.ndarray:
        return np.zeros((len(batch), 10))  # always class 0

    expected = float(np.mean(y == 0))
    assert evaluate_accuracy(oracle, split.x_test, y, batch_size=100) == pytest.approx(expected)


@pytest.mark.parametrize("name", NAMES)
def test_committed_checkpoint_reaches_95_percent(split: DigitsSplit, name: str) -> None:
    path = digits.digits_checkpoint_path(name)
    assert path.is_file() and len(path.read_bytes()) < 1_000_000
    model = digits.load_digits_model(name)
    accuracy = evaluate_accuracy(torch_predict_fn(model), split.x_test, split.y_test)
    assert accuracy >= 0.95, f"{name}: {accuracy:.4f}"
    metrics = digits.digits_metrics()
    assert metrics["models"][name]["test_accuracy"] == pytest.approx(accuracy, abs=1e-9)
    assert metrics["models"][name]["checkpoint_bytes"] == len(path.read_bytes())
    file = digits.digits_checkpoint_file(name)  # a real path, e.g. for export_model's -c
    assert isinstance(file, Path) and file.read_bytes() == path.read_bytes()
    spec = get_model_spec(name)
    assert spec.checkpoint is not None and spec.checkpoint() == file
    block = SEBasicBlock if name.startswith("se_") else SASEBottleneck
    assert sum(isinstance(m, block) for m in model.modules()) == 2


def test_load_digits_model_errors_are_user_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UserError, match="unknown digits model"):
        digits.load_digits_model("nope")
    with pytest.raises(UserError, match="not found"):
        digits.load_digits_model("se_resnet_digits", tmp_path / "missing.pt")


@pytest.mark.parametrize("name", NAMES)
def test_training_is_reproducible(split: DigitsSplit, name: str) -> None:
    small = replace(split, x_train=split.x_train[:256], y_train=split.y_train[:256])
    factory = getattr(digits, name)
    first = train_classifier(factory, small, epochs=2, batch_size=64, seed=7).model.state_dict()
    second = train_classifier(factory, small, epochs=2, batch_size=64, seed=7).model.state_dict()
    other = train_classifier(factory, small, epochs=2, batch_size=64, seed=8).model.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def _block_sklearn(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every `import sklearn...` fail, and drop the cached packaged arrays."""
    for module in [m for m in sys.modules if m == "sklearn" or m.startswith("sklearn.")]:
        monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.setitem(sys.modules, "sklearn", None)
    digits_data._shipped_arrays.cache_clear()


def test_split_needs_no_scikit_learn(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = load_digits_split()
    _block_sklearn(monkeypatch)
    try:
        split = load_digits_split()
        with pytest.raises(UserError, match="scikit-learn"):
            load_digits_split(seed=1)  # another split is made afresh, with scikit-learn
    finally:
        digits_data._shipped_arrays.cache_clear()
    for field in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(split, field), getattr(expected, field))
    assert (split.mean, split.std) == (TRAIN_PIXEL_MEAN, TRAIN_PIXEL_STD)


def test_shipped_npz_is_scikit_learns_digits_and_split() -> None:
    pytest.importorskip("sklearn", reason="rebuilding the digits data needs scikit-learn (dev)")
    with np.load(io.BytesIO(digits_asset("digits.npz").read_bytes())) as npz:
        shipped = {k: npz[k] for k in npz.files}
    rebuilt = digits_data.sklearn_digits_arrays()
    assert sorted(shipped) == sorted(rebuilt) == ["images", "labels", "test_index", "train_index"]
    for key, arr in rebuilt.items():
        assert shipped[key].dtype == arr.dtype and shipped[key].shape == arr.shape, key
        np.testing.assert_array_equal(shipped[key], arr, err_msg=key)
    assert shipped["images"].dtype == np.uint8 and shipped["images"].shape == (1797, 8, 8)
    assert shipped["images"].max() == 16 and shipped["labels"].dtype == np.int64
    both = np.concatenate([shipped["train_index"], shipped["test_index"]])
    np.testing.assert_array_equal(np.sort(both), np.arange(1797))


def test_split_is_bitwise_scikit_learns(split: DigitsSplit) -> None:
    """Same arrays as splitting scikit-learn's float64 images directly (the pre-npz code)."""
    datasets = pytest.importorskip("sklearn.datasets", reason="needs scikit-learn (dev extra)")
    from sklearn.model_selection import train_test_split

    raw = datasets.load_digits()
    images, labels = raw.images.astype(np.float64), raw.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=0.3, stratify=labels, random_state=0
    )
    mean, std = float(x_train.mean()), float(x_train.std())
    assert (split.mean, split.std) == (mean, std) == (TRAIN_PIXEL_MEAN, TRAIN_PIXEL_STD)
    for got, want in (
        (split.x_train, ((x_train - mean) / std).astype(np.float32)[:, None]),
        (split.x_test, ((x_test - mean) / std).astype(np.float32)[:, None]),
        (split.y_train, y_train),
        (split.y_test, y_test),
    ):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert got.tobytes() == want.tobytes()


def test_eval_and_calibration_arrays(split: DigitsSplit) -> None:
    x, y = digits_eval_arrays()
    assert x.shape == (540, 1, 8, 8) and x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(x, split.x_test)
    np.testing.assert_array_equal(y, split.y_test)
    calib = digits_calibration_arrays()
    assert calib.shape == (512, 1, 8, 8) and calib.dtype == np.float32
    np.testing.assert_array_equal(calib, split.x_train[:512])  # the train split, never the test
    np.testing.assert_array_equal(digits_calibration_arrays(16), calib[:16])
    assert len(digits_calibration_arrays(len(split.x_train))) == 1257
    for bad in (0, 1258):
        with pytest.raises(UserError, match=r"1\.\.1257"):
            digits_calibration_arrays(bad)


def test_written_npz_feeds_the_calibration_loader(split: DigitsSplit, tmp_path: Path) -> None:
    inputs = (GraphInput("x", (None, 1, 8, 8), np.dtype(np.float32)),)
    source = array_file_source(write_digits_npz(tmp_path / "eval.npz", "eval"), inputs)
    assert source.num_samples == 540
    np.testing.assert_array_equal(source.arrays["x"], split.x_test)
    labels = source.labels()
    assert labels is not None
    np.testing.assert_array_equal(labels, split.y_test)
    path = write_digits_npz(tmp_path / "calib.npz", "calibration", n=64)
    with np.load(path) as npz:
        assert npz.files == ["x"]
    source = array_file_source(path, inputs)
    assert source.num_samples == 64 and source.labels() is None
    np.testing.assert_array_equal(source.arrays["x"], split.x_train[:64])
    with pytest.raises(UserError, match=r"\.npz"):
        write_digits_npz(tmp_path / "calib.npy", "calibration")
    with pytest.raises(UserError, match="unknown digits split"):
        write_digits_npz(tmp_path / "x.npz", "test")  # type: ignore[arg-type]
