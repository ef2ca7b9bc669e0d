"""Default tolerances per precision, user overrides, and the checks that give a verdict.

A tolerance is a limit on one metric: errors have an upper limit (`rel_max_abs`,
`accuracy_drop`), similarities a lower one (`cosine`, `top1_agreement`, `psnr_db`, `ssim`).
`None` turns a check off. Any NaN/Inf in a candidate's output always fails.

The defaults were set from measurements on the trained digits classifiers and FastGAN-SLIM 256
(docs/reports.md): FP32 must match PyTorch to float32 rounding; FP16 and INT8 are judged on
what users ship on (top-1 agreement, accuracy, PSNR) with a loose bound on raw errors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from sase_deploy.errors import UserError
from sase_deploy.vocabulary import PRECISIONS

UPPER = ("rel_max_abs", "accuracy_drop")  # value <= limit
LOWER = ("cosine", "top1_agreement", "psnr_db", "ssim")  # value >= limit
METRICS = (*UPPER, *LOWER)
ALIASES = {
    "rel": "rel_max_abs",
    "top1": "top1_agreement",
    "psnr": "psnr_db",
    "acc": "accuracy_drop",
}

Tolerances = dict[str, dict[str, float | None]]

DEFAULT_TOLERANCES: Tolerances = {
    "fp32": {
        "rel_max_abs": 1e-4,
        "cosine": 0.99999,
        "top1_agreement": 0.99,
        "accuracy_drop": 0.005,
        "psnr_db": 60.0,
        "ssim": None,
    },
    "fp16": {
        "rel_max_abs": 2e-2,
        "cosine": 0.999,
        "top1_agreement": 0.98,
        "accuracy_drop": 0.01,
        "psnr_db": 35.0,
        "ssim": None,
    },
    "int8": {
        "rel_max_abs": None,
        "cosine": 0.95,
        "top1_agreement": 0.95,
        "accuracy_drop": 0.02,
        "psnr_db": 20.0,
        "ssim": None,
    },
}


def parse_tolerances(overrides: Sequence[str]) -> Tolerances:
    """Defaults with `[PRECISION.]METRIC=VALUE` overrides (VALUE a number or `none`).

    `rel=1e-3` sets every precision; `fp16.rel=5e-2` one. Bad text is a UserError.
    """
    table = {p: dict(limits) for p, limits in DEFAULT_TOLERANCES.items()}
    for text in overrides:
        key, sep, raw = text.partition("=")
        precision, dot, metric = key.strip().rpartition(".")
        metric = ALIASES.get(metric, metric)
        targets = [precision] if dot else list(PRECISIONS)
        if not sep or metric not in METRICS or any(p not in PRECISIONS for p in targets):
            raise UserError(
                f"bad --tolerance {text!r}: write [PRECISION.]METRIC=VALUE, PRECISION one of "
                f"{', '.join(PRECISIONS)}, METRIC one of {', '.join(METRICS)}; e.g. fp16.rel=0.05"
            )
        value: float | None = None
        if raw.strip().lower() != "none":
            try:
                value = float(raw)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise UserError(f"bad --tolerance {text!r}: VALUE must be a number or 'none'")
        for p in targets:
            table[p][metric] = value
    return table


def _check(metric: str, output: str | None, value: float | None, limit: float) -> dict[str, Any]:
    upper = metric in UPPER or metric == "nonfinite"
    passed = value is not None and (value <= limit if upper else value >= limit)
    return {
        "metric": metric,
        "output": output,
        "value": value,
        "limit": limit,
        "op": "<=" if upper else ">=",
        "passed": bool(passed),
    }


def run_checks(
    limits: Mapping[str, float | None],
    outputs: Sequence[Mapping[str, Any]],
    metrics: Mapping[str, float | None],
    primary_output: str,
) -> list[dict[str, Any]]:
    """The checks of one candidate: per output (NaN/Inf, rel_max_abs, cosine), then the task
    metrics present in `metrics` (reported for `primary_output`)."""
    checks = []
    for out in outputs:
        checks.append(_check("nonfinite", out["name"], out["nonfinite"], 0))
        for metric in ("rel_max_abs", "cosine"):
            limit = limits.get(metric)
            if limit is not None:
                checks.append(_check(metric, out["name"], out[metric], limit))
    for metric in ("top1_agreement", "accuracy_drop", "psnr_db", "ssim"):
        limit = limits.get(metric)
        if limit is not None and metric in metrics:
            checks.append(_check(metric, primary_output, metrics[metric], limit))
    return checks


def describe_failure(check: Mapping[str, Any]) -> str:
    """'output logits: rel_max_abs 0.031 > 0.01 (over by 0.021)'."""
    value, limit = check["value"], check["limit"]
    where = f"output {check['output']}: " if check["output"] else ""
    if value is None:
        return f"{where}{check['metric']} not finite (limit {check['op']} {limit:.4g})"
    if check["metric"] == "nonfinite":
        return f"{where}{int(value)} NaN/Inf values"
    if check["op"] == "<=":
        return f"{where}{check['metric']} {value:.4g} > {limit:.6g} (over by {value - limit:.3g})"
    return f"{where}{check['metric']} {value:.6g} < {limit:.6g} (short by {limit - value:.3g})"
