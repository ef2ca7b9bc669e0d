"""scikit-learn's 8x8 digits as a small, real classification task for accuracy checks.

The data ship as package data (`sase_deploy/assets/digits/digits.npz`, ~50 KB): the 1797 raw
images (uint8, 0..16) and labels in scikit-learn's order, plus the fixed split (70/30,
stratified, `random_state=0`) as index arrays, so no scikit-learn is needed at runtime.
`examples/digits/train.py --rebuild-data` regenerates the file from scikit-learn (a `dev` extra).
Pixels are normalised with the mean/std of the training split, so accuracy numbers from every
run are comparable.

Ready data for the rest of the tool: `digits_eval_arrays()` (the test split, with labels),
`digits_calibration_arrays()` (a fixed slice of the training split) and `write_digits_npz()`,
which writes either as an `.npz` that `--data` (calibration / sensitivity) reads.
"""

from __future__ import annotations

import functools
import io
import os
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import nn

from sase_deploy._io import write_bytes_atomic
from sase_deploy.errors import UserError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

SPLIT_SEED = 0
TEST_FRACTION = 0.3
# Mean/std of the raw training pixels (0..16 units) of the fixed split; tests re-derive them.
TRAIN_PIXEL_MEAN = 4.888872315035799
TRAIN_PIXEL_STD = 6.017991412887688
# Package data (checkpoints, metrics.json, digits.npz), relative to the `sase_deploy` package.
ASSETS_SUBDIR = ("assets", "digits")
DATA_FILE = "digits.npz"
CALIBRATION_SAMPLES = 512
DigitsNpzSplit = Literal["eval", "calibration"]


def digits_asset(name: str) -> Traversable:
    """A digits package-data file (works from a source tree, a wheel or a zip install)."""
    folder = resources.files("sase_deploy")
    for part in ASSETS_SUBDIR:
        folder = folder / part
    return folder / name


@dataclass(frozen=True)
class DigitsSplit:
    """Normalised float32 images (N, 1, 8, 8) and int64 labels (N,)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    mean: float
    std: float


def sklearn_digits_arrays(
    seed: int = SPLIT_SEED, test_fraction: float = TEST_FRACTION
) -> dict[str, np.ndarray]:
    """The arrays of `digits.npz`, rebuilt from scikit-learn (needs the `dev` extra).

    `images` (1797, 8, 8) uint8 0..16 and `labels` (1797,) int64 in `load_digits` order;
    `train_index` / `test_index` int64 from `train_test_split(..., stratify=labels)`.
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:  # scikit-learn is a dev extra
        raise UserError(
            "rebuilding the digits data needs scikit-learn: pip install 'sase-deploy[dev]'"
        ) from exc
    digits = load_digits()
    images = np.asarray(digits.images)
    if not (np.array_equal(images, np.round(images)) and images.min() >= 0 and images.max() <= 16):
        raise UserError("scikit-learn's digits are no longer integers 0..16; cannot store as uint8")
    labels = np.asarray(digits.target).astype(np.int64)
    train_index, test_index = train_test_split(
        np.arange(len(labels), dtype=np.int64),
        test_size=test_fraction,
        stratify=labels,
        random_state=seed,
    )
    return {
        "images": images.astype(np.uint8),
        "labels": labels,
        "train_index": np.asarray(train_index, dtype=np.int64),
        "test_index": np.asarray(test_index, dtype=np.int64),
    }


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A compressed `.npz` of `arrays`, byte-reproducible (fixed member order and timestamps,
    unlike `np.savez_compressed`), so rebuilding unchanged data leaves a committed file as is."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for key, arr in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arr), allow_pickle=False)
            archive.writestr(info, member.getvalue(), compresslevel=9)
    return buffer.getvalue()


def save_digits_data(path: str | os.PathLike[str], arrays: dict[str, np.ndarray]) -> Path:
    """Write `sklearn_digits_arrays()` output as the package-data `.npz` (`digits.npz`)."""
    return write_bytes_atomic(path, _npz_bytes(arrays))


@functools.lru_cache(maxsize=1)
def _shipped_arrays() -> dict[str, np.ndarray]:
    """The packaged `digits.npz` (read once; the arrays are read-only)."""
    asset = digits_asset(DATA_FILE)
    try:
        data = asset.read_bytes()
    except OSError as exc:
        raise UserError(
            f"packaged digits data {DATA_FILE} is missing ({exc}): reinstall sase-deploy, or "
            "in a source tree run 'python examples/digits/train.py --data-only'"
        ) from exc
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in ("images", "labels", "train_index", "test_index")}
    for arr in arrays.values():
        arr.setflags(write=False)
    return arrays


def load_digits_split(seed: int = SPLIT_SEED, test_fraction: float = TEST_FRACTION) -> DigitsSplit:
    """The stratified train/test split, normalised with the training split's pixel mean/std.

    The default split comes from the packaged `digits.npz` (no scikit-learn); any other
    `seed`/`test_fraction` is split afresh with scikit-learn (`dev` extra).
    """
    if seed == SPLIT_SEED and test_fraction == TEST_FRACTION:
        arrays = _shipped_arrays()
    else:
        arrays = sklearn_digits_arrays(seed, test_fraction)
    images = arrays["images"].astype(np.float64)
    labels = arrays["labels"]
    x_train, x_test = images[arrays["train_index"]], images[arrays["test_index"]]
    y_train, y_test = labels[arrays["train_index"]], labels[arrays["test_index"]]
    mean, std = float(x_train.mean()), float(x_train.std())

    def normalise(x: np.ndarray) -> np.ndarray:
        return ((x - mean) / std).astype(np.float32)[:, None, :, :]

    return DigitsSplit(normalise(x_train), y_train, normalise(x_test), y_test, mean, std)


def digits_eval_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The fixed test split for accuracy: (x (540, 1, 8, 8) float32 normalised, y (540,) int64)."""
    split = load_digits_split()
    return split.x_test, split.y_test


def digits_test_set() -> tuple[np.ndarray, np.ndarray]:
    """The fixed test split (same as `digits_eval_arrays`)."""
    return digits_eval_arrays()


def digits_calibration_arrays(n: int = CALIBRATION_SAMPLES) -> np.ndarray:
    """The first `n` images of the fixed TRAIN split (never the test split): (n, 1, 8, 8) float32.

    The training split is already in a shuffled, stratified order, so any prefix mixes classes.
    """
    x_train = load_digits_split().x_train
    if not 1 <= n <= len(x_train):
        raise UserError(f"digits calibration takes 1..{len(x_train)} training images, not {n}")
    return np.ascontiguousarray(x_train[:n])


def write_digits_npz(
    path: str | os.PathLike[str], split: DigitsNpzSplit, *, n: int = CALIBRATION_SAMPLES
) -> Path:
    """Write digits data as an `.npz` that calibration's `--data` reads (the ONNX input is `x`).

    `eval`: the test split, `x` (540, 1, 8, 8) float32 and labels `y` (540,) int64 (the array
    source takes labels from `y`, so sensitivity reports top-1 accuracy). `calibration`: `x`
    only, the first `n` training images. Returns the path written.
    """
    dest = Path(path)
    if dest.suffix != ".npz":
        raise UserError(f"{dest}: digits arrays are written as .npz; give a path ending in .npz")
    arrays: dict[str, np.ndarray]
    if split == "eval":
        x, y = digits_eval_arrays()
        arrays = {"x": x, "y": y}
    elif split == "calibration":
        arrays = {"x": digits_calibration_arrays(n)}
    else:
        raise UserError(f"unknown digits split '{split}': use 'eval' or 'calibration'")
    return write_bytes_atomic(dest, _npz_bytes(arrays))


def evaluate_accuracy(
    predict_fn: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int = 256,
) -> float:
    """Top-1 accuracy of `predict_fn` (images -> logits, any engine) over `x`, in batches."""
    correct = 0
    for start in range(0, len(x), batch_size):
        logits = np.asarray(predict_fn(x[start : start + batch_size]))
        correct += int((logits.argmax(axis=1) == y[start : start + batch_size]).sum())
    return correct / len(x)


def torch_predict_fn(model: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    """Wrap a torch model (set to eval) as a numpy images -> logits function."""
    model.eval()

    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(np.ascontiguousarray(batch))).numpy()

    return predict


@dataclass(frozen=True)
class TrainResult:
    model: nn.Module
    train_seconds: float
    final_loss: float


def train_classifier(
    factory: Callable[[], nn.Module],
    split: DigitsSplit,
    epochs: int = 12,
    batch_size: int = 128,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> TrainResult:
    """Build the model under `seed` and train it with AdamW + one-cycle LR (deterministic on CPU).

    The shuffling uses its own seeded generator, so two runs with the same seed and thread
    count give identical weights. The last incomplete batch is dropped (BatchNorm1d in SASE
    blocks cannot train on a batch of one).
    """
    torch.manual_seed(seed)
    model = factory()
    model.train()
    x = torch.from_numpy(split.x_train)
    y = torch.from_numpy(split.y_train)
    steps_per_epoch = len(x) // batch_size
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch
    )
    generator = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    loss = torch.zeros(())
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for step in range(steps_per_epoch):
            index = order[step * batch_size : (step + 1) * batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[index]), y[index])
            loss.backward()
            optimizer.step()
            schedule.step()
    elapsed = time.perf_counter() - start
    return TrainResult(model.eval(), elapsed, float(loss.detach()))
