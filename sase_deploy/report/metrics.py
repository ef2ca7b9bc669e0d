"""Accuracy of a candidate's outputs against the reference's, on the same inputs.

Everything is computed in float64 so the metric itself adds no rounding. Per output: max / mean
absolute error, the error relative to the output's scale (max|ref|) and the count of NaN/Inf
values (all from `sase_deploy.runtime.compare`, which export parity and the rewrite self-check
use too), plus the worst per-sample cosine similarity and a histogram of absolute errors. Per task:
classifiers get top-1 / top-5 agreement with the reference (and accuracy against labels when the
data carry them); generators get PSNR and SSIM (PSNR and top-1 from `runtime.compare`, which
calibration's sensitivity search scores with too).

SSIM is written here (a 7x7 uniform window, as scikit-image's default, with the usual K1 = 0.01,
K2 = 0.03): the field's implementations live in scikit-image or torchmetrics, heavy dependencies
for a dozen lines of box filtering.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sase_deploy.runtime.compare import Residual, data_range, psnr, top1, top1_agreement

HISTOGRAM_MAX_BINS = 12
SSIM_WINDOW = 7


def output_metrics(name: str, ref: np.ndarray, got: np.ndarray) -> dict[str, Any]:
    """Errors of `got` against `ref` for one output (the report's `outputs[]` entry).

    Args:
        name: the output's name.
        ref: the reference's values for this output.
        got: the candidate's values, with `ref`'s shape.

    Errors that are not finite (NaN/Inf on either side) are null: JSON has no NaN/Inf.
    """
    res = Residual.of(name, ref, got)
    diff = res.summary()
    return {
        "name": name,
        "shape": list(ref.shape),
        "max_abs": _json_float(diff.max_abs),
        "mean_abs": _json_float(diff.mean_abs),
        "scale": _json_float(diff.scale),  # a NaN/Inf in the reference itself
        "rel_max_abs": _json_float(diff.rel_max_abs),
        "cosine": _json_float(worst_cosine(res.ref, res.got)),
        "nonfinite": res.nonfinite,
        "error_histogram": error_histogram(res.finite_errors),
    }


def _json_float(value: float) -> float | None:
    """JSON has no inf/nan: a non-finite error is reported as null (with `nonfinite` > 0)."""
    return value if math.isfinite(value) else None


def worst_cosine(ref: np.ndarray, got: np.ndarray) -> float:
    """The smallest cosine similarity over samples (axis 0); 1.0 when both are zero or there
    is nothing to compare; NaN when a sample holds a NaN or Inf (no angle to speak of)."""
    if ref.size == 0:
        return 1.0
    r = ref.reshape(len(ref), -1) if ref.ndim > 1 else ref.reshape(1, -1)
    g = got.reshape(len(got), -1) if got.ndim > 1 else got.reshape(1, -1)
    if not (np.isfinite(r).all() and np.isfinite(g).all()):
        return float("nan")
    dot = np.sum(r * g, axis=1)
    norms = np.linalg.norm(r, axis=1) * np.linalg.norm(g, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(norms > 0, dot / np.where(norms > 0, norms, 1.0), 1.0)
    if not np.all(np.isfinite(cos)):
        return float("nan")
    return float(np.clip(cos, -1.0, 1.0).min()) if cos.size else 1.0


def error_histogram(err: np.ndarray) -> dict[str, list[float] | list[int]]:
    """Counts of absolute errors in decade bins (zeros go to the first bin)."""
    if err.size == 0:
        return {"edges": [], "counts": []}
    top = float(err.max())
    if top <= 0.0:
        return {"edges": [0.0, 1e-12], "counts": [int(err.size)]}
    nonzero = err[err > 0]
    high = math.ceil(math.log10(top))
    low = max(math.floor(math.log10(float(nonzero.min()))), high - HISTOGRAM_MAX_BINS)
    high = max(high, low + 1)
    edges = [10.0**k for k in range(low, high + 1)]
    counts, _ = np.histogram(np.clip(err, edges[0], edges[-1]), bins=edges)
    return {"edges": edges, "counts": [int(c) for c in counts]}


def classification_metrics(
    ref_logits: np.ndarray, got_logits: np.ndarray, labels: np.ndarray | None
) -> dict[str, float | None]:
    """Top-1 / top-5 agreement with the reference; accuracy of each against `labels`."""
    r = ref_logits.reshape(len(ref_logits), -1)
    g = got_logits.reshape(len(got_logits), -1)
    ref_top1 = r.argmax(axis=1)
    got_top1 = top1(g)
    k = min(5, r.shape[1])
    got_topk = np.argsort(-np.nan_to_num(g, nan=-np.inf), axis=1)[:, :k]
    metrics: dict[str, float | None] = {
        "top1_agreement": top1_agreement(r, g),
        "top5_agreement": float(np.mean((got_topk == ref_top1[:, None]).any(axis=1))),
    }
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)[: len(r)]
        ref_acc = float(np.mean(ref_top1 == labels))
        acc = float(np.mean(got_top1 == labels))
        metrics.update(
            {"accuracy": acc, "reference_accuracy": ref_acc, "accuracy_drop": ref_acc - acc}
        )
    return metrics


def reference_metrics(ref_logits: np.ndarray, labels: np.ndarray | None) -> dict[str, float]:
    """What the reference itself scores (classifiers with labels: accuracy)."""
    if labels is None:
        return {}
    predicted = ref_logits.reshape(len(ref_logits), -1).argmax(axis=1)
    expected = np.asarray(labels).reshape(-1)[: len(predicted)]
    return {"accuracy": float(np.mean(predicted == expected))}


def _box_mean(x: np.ndarray, k: int) -> np.ndarray:
    """Mean over every k x k window of the last two axes ('valid' positions)."""
    c = np.cumsum(np.cumsum(np.pad(x, [(0, 0)] * (x.ndim - 2) + [(1, 0), (1, 0)]), -1), -2)
    total = c[..., k:, k:] - c[..., :-k, k:] - c[..., k:, :-k] + c[..., :-k, :-k]
    return total / (k * k)


def ssim(ref: np.ndarray, got: np.ndarray, span: float) -> float | None:
    """Mean structural similarity of images (..., H, W); None if not finite or too small."""
    x = ref.astype(np.float64)
    y = got.astype(np.float64)
    if not np.all(np.isfinite(y)) or min(x.shape[-2:]) < SSIM_WINDOW:
        return None
    c1, c2 = (0.01 * span) ** 2, (0.03 * span) ** 2
    k = SSIM_WINDOW
    mx, my = _box_mean(x, k), _box_mean(y, k)
    n = k * k
    unbias = n / (n - 1)  # sample (co)variances, as scikit-image
    vx = (_box_mean(x * x, k) - mx * mx) * unbias
    vy = (_box_mean(y * y, k) - my * my) * unbias
    cov = (_box_mean(x * y, k) - mx * my) * unbias
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s.mean())


def generation_metrics(ref: np.ndarray, got: np.ndarray) -> dict[str, float | None]:
    """PSNR (dB) and SSIM of generated images against the reference's."""
    span = data_range(ref)
    value = psnr(ref, got, span)
    return {
        "psnr_db": None if value is None else min(value, 200.0),  # identical: capped, not inf
        "ssim": ssim(ref, got, span) if ref.ndim >= 3 else None,
    }
