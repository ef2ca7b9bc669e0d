"""scikit-learn's 8x8 digits as a small, real classification task for accuracy checks.

The data ship inside scikit-learn (no download; scikit-learn is a `dev` extra, imported lazily).
The split is fixed (70/30, stratified, `random_state=0`) and pixels are normalised with the
mean/std of the training split, so accuracy numbers from every run are comparable.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from sase_deploy.errors import UserError

SPLIT_SEED = 0
TEST_FRACTION = 0.3
# Mean/std of the raw training pixels (0..16 units) of the fixed split; tests re-derive them.
TRAIN_PIXEL_MEAN = 4.888872315035799
TRAIN_PIXEL_STD = 6.017991412887688


@dataclass(frozen=True)
class DigitsSplit:
    """Normalised float32 images (N, 1, 8, 8) and int64 labels (N,)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    mean: float
    std: float


def _load_raw() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # scikit-learn is a dev extra
        raise UserError(
            "the digits data need scikit-learn: pip install 'sase-deploy[dev]'"
        ) from exc
    digits = load_digits()
    return digits.images.astype(np.float64), digits.target.astype(np.int64)


def load_digits_split(seed: int = SPLIT_SEED, test_fraction: float = TEST_FRACTION) -> DigitsSplit:
    """The stratified train/test split, normalised with the training split's pixel mean/std."""
    from sklearn.model_selection import train_test_split

    images, labels = _load_raw()
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=test_fraction, stratify=labels, random_state=seed
    )
    mean, std = float(x_train.mean()), float(x_train.std())

    def normalise(x: np.ndarray) -> np.ndarray:
        return ((x - mean) / std).astype(np.float32)[:, None, :, :]

    return DigitsSplit(normalise(x_train), y_train, normalise(x_test), y_test, mean, std)


def digits_test_set() -> tuple[np.ndarray, np.ndarray]:
    """The fixed test split: (x (540, 1, 8, 8) float32 normalised, y (540,) int64)."""
    split = load_digits_split()
    return split.x_test, split.y_test


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
