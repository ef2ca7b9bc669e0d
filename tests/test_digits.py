"""Digits: fixed split, committed checkpoints' real accuracy, reproducible training."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn", reason="the digits data ship with scikit-learn (dev extra)")

from sase_deploy.errors import UserError
from sase_deploy.models import digits
from sase_deploy.models.digits_data import (
    DigitsSplit,
    digits_test_set,
    evaluate_accuracy,
    load_digits_split,
    torch_predict_fn,
    train_classifier,
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
    assert path.stat().st_size < 1_000_000
    model = digits.load_digits_model(name)
    accuracy = evaluate_accuracy(torch_predict_fn(model), split.x_test, split.y_test)
    assert accuracy >= 0.95, f"{name}: {accuracy:.4f}"
    metrics = json.loads((path.parent / "metrics.json").read_text())
    assert metrics["models"][name]["test_accuracy"] == pytest.approx(accuracy, abs=1e-9)
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
