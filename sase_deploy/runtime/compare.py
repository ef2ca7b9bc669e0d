"""The difference between a result's outputs and the reference's: the one place it is computed.

Everything is in float64, so the comparison adds no rounding of its own. Per output: max / mean
absolute error, the output's scale max|ref| (at least 1e-12) and the error relative to it,
max|ref - got| / max|ref| (`rel_max_abs`, the number tolerances are stated in, so one tolerance
means the same for logits and for large images), and whether either side holds NaN/Inf.

Non-finite values are not dropped: a NaN anywhere makes max / mean / relative error NaN, an Inf
makes them Inf (or NaN), and `worst_relative` is Inf as soon as one output is not finite. Callers
that compare only the finite parts (the rewrite self-check) zero the rest before calling.

Used by the parity report (`sase_deploy.report.metrics`, which adds cosine, histograms and the
other task metrics on top), by export parity (`sase_deploy.export.parity`) and by the fusion
pass's numerical self-check (`sase_deploy.rewrite.self_check`).

The task metrics two stages share live here too, once: `psnr` (the report's generator metric and
calibration's sensitivity score) and `top1_agreement` / `top1` (the report's classifier metric
and calibration's sensitivity score without labels). A row of logits holding NaN/Inf predicts
no class (-1), so it never agrees with the reference nor matches a label.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

MIN_SCALE = 1e-12  # the scale of an all-zero reference: errors against it stay finite


@dataclass(frozen=True)
class OutputDiff:
    """Errors of `got` against `ref` for one output.

    `scale` is max|ref| (at least 1e-12); `rel_max_abs` = max_abs / scale is the error relative
    to the output's scale, the number tolerances are stated in. `finite` is False when either
    side holds a NaN or Inf.
    """

    name: str
    max_abs: float
    mean_abs: float
    scale: float
    rel_max_abs: float
    finite: bool

    def to_dict(self) -> dict[str, float | str | bool]:
        return asdict(self)


@dataclass(frozen=True)
class Residual:
    """One output's reference and result in float64, and their elementwise |ref - got|.

    Build it with `Residual.of`; `summary()` gives the `OutputDiff`. The arrays are kept for
    metrics that need more than the summary (the report's cosine and error histogram).
    """

    name: str
    ref: np.ndarray
    got: np.ndarray
    abs_err: np.ndarray

    @classmethod
    def of(cls, name: str, ref: np.ndarray, got: np.ndarray) -> Residual:
        """Cast both to float64 and take |ref - got|.

        Args:
            name: the output's name (used in the error message and the summary).
            ref: the reference's values for this output.
            got: the compared run's values; must have `ref`'s shape (any numeric dtype).

        Raises:
            ValueError: the shapes differ.
        """
        if ref.shape != got.shape:
            raise ValueError(f"output '{name}': shape {got.shape} != reference {ref.shape}")
        r = ref.astype(np.float64)
        g = got.astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore"):  # inf - inf, overflow: NaN / Inf
            err = np.abs(r - g)
        return cls(name, r, g, err)

    @property
    def nonfinite(self) -> int:
        """How many values of `got` are NaN or Inf."""
        return int(np.size(self.got) - np.count_nonzero(np.isfinite(self.got)))

    @property
    def finite_errors(self) -> np.ndarray:
        """The absolute errors that are finite (flattened)."""
        return self.abs_err[np.isfinite(self.abs_err)]

    def summary(self) -> OutputDiff:
        """Max / mean absolute error, scale and relative error (0 for an empty output)."""
        scale = max(float(np.abs(self.ref).max()) if self.ref.size else 0.0, MIN_SCALE)
        max_abs = float(self.abs_err.max()) if self.abs_err.size else 0.0
        return OutputDiff(
            name=self.name,
            max_abs=max_abs,
            mean_abs=float(self.abs_err.mean()) if self.abs_err.size else 0.0,
            scale=scale,
            rel_max_abs=max_abs / scale,
            finite=bool(np.isfinite(self.got).all() and np.isfinite(self.ref).all()),
        )


def compare_outputs(
    ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray]
) -> list[OutputDiff]:
    """The errors of every reference output, in `ref`'s order.

    Args:
        ref: the reference outputs by name.
        got: the compared run's outputs by name; must hold every name in `ref` (extra names are
            ignored), each with the reference's shape.

    Raises:
        KeyError: an output of `ref` is missing from `got`.
        ValueError: an output's shape differs from the reference's.
    """
    missing = set(ref) - set(got)
    if missing:
        raise KeyError(f"outputs missing from the compared run: {sorted(missing)}")
    return [Residual.of(name, r, got[name]).summary() for name, r in ref.items()]


def worst_relative(diffs: list[OutputDiff]) -> float:
    """The largest scale-relative error over all outputs (inf if any is non-finite).

    Args:
        diffs: per-output errors, as `compare_outputs` returns them (empty: 0.0).
    """
    if any(not d.finite for d in diffs):
        return float("inf")
    return max((d.rel_max_abs for d in diffs), default=0.0)


def data_range(ref: np.ndarray) -> float:
    """The reference's dynamic range (max - min): PSNR's peak (and SSIM's L); 1.0 when flat."""
    span = float(ref.max() - ref.min()) if ref.size else 0.0
    return span if span > 0 else 1.0


def psnr(ref: np.ndarray, got: np.ndarray, span: float) -> float | None:
    """Peak signal-to-noise ratio in dB over the whole batch (inf when identical).

    Args:
        ref: the reference's values.
        got: the compared run's values, with `ref`'s shape.
        span: the peak, usually `data_range(ref)`.

    Returns None when there is no finite PSNR to speak of: `got` holds NaN/Inf, or the mean
    squared error itself is not finite (a NaN/Inf reference, or errors that overflow float64).
    """
    g = got.astype(np.float64)
    if not np.all(np.isfinite(g)):
        return None
    with np.errstate(over="ignore", invalid="ignore"):
        mse = float(np.mean((ref.astype(np.float64) - g) ** 2))
    if not math.isfinite(mse):
        return None
    return float("inf") if mse == 0 else 10.0 * math.log10(span * span / mse)


def top1(logits: np.ndarray) -> np.ndarray:
    """The predicted class of each sample (axis 0); -1 where a sample's logits hold NaN/Inf."""
    flat = logits.reshape(len(logits), -1)
    return np.where(np.isfinite(flat).all(axis=1), flat.argmax(axis=1), -1)


def top1_agreement(ref_logits: np.ndarray, got_logits: np.ndarray) -> float:
    """The fraction of samples whose top-1 class matches the reference's (0..1).

    Args:
        ref_logits: the reference's logits, samples along axis 0 (its argmax, unguarded).
        got_logits: the compared run's logits, same samples; a non-finite row never agrees.
    """
    ref_top1 = ref_logits.reshape(len(ref_logits), -1).argmax(axis=1)
    return float(np.mean(ref_top1 == top1(got_logits)))
