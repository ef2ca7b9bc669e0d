"""Numerical comparison of two sets of named outputs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class OutputDiff:
    """Errors of `got` against `ref` for one output.

    `scale` is max|ref| (at least 1e-12); `rel_max_abs` = max_abs / scale is the error relative
    to the output's scale, the number tolerances are stated in.
    """

    name: str
    max_abs: float
    mean_abs: float
    scale: float
    rel_max_abs: float
    finite: bool

    def to_dict(self) -> dict[str, float | str | bool]:
        return asdict(self)


def compare_outputs(
    ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray]
) -> list[OutputDiff]:
    missing = set(ref) - set(got)
    if missing:
        raise KeyError(f"outputs missing from the compared run: {sorted(missing)}")
    diffs = []
    for name, r in ref.items():
        g = got[name]
        if r.shape != g.shape:
            raise ValueError(f"output '{name}': shape {g.shape} != reference {r.shape}")
        r64 = r.astype(np.float64)
        g64 = g.astype(np.float64)
        finite = bool(np.isfinite(g64).all() and np.isfinite(r64).all())
        err = np.abs(r64 - g64)
        scale = max(float(np.abs(r64).max()) if r64.size else 0.0, 1e-12)
        max_abs = float(err.max()) if err.size else 0.0
        diffs.append(
            OutputDiff(
                name=name,
                max_abs=max_abs,
                mean_abs=float(err.mean()) if err.size else 0.0,
                scale=scale,
                rel_max_abs=max_abs / scale,
                finite=finite,
            )
        )
    return diffs


def worst_relative(diffs: list[OutputDiff]) -> float:
    """The largest scale-relative error over all outputs (inf if any is non-finite)."""
    if any(not d.finite for d in diffs):
        return float("inf")
    return max((d.rel_max_abs for d in diffs), default=0.0)
