"""Built-in parity: the exported file on ONNX Runtime CPU against the PyTorch model."""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from sase_deploy.models.spec import InputSpec, sample_inputs
from sase_deploy.runtime.base import Outputs
from sase_deploy.runtime.compare import compare_outputs, worst_relative
from sase_deploy.runtime.ort import OrtRunner
from sase_deploy.runtime.torch_runner import TorchRunner


@dataclass
class ParityRun:
    batch: int
    outputs: list[dict[str, Any]]  # OutputDiff.to_dict() per output
    worst_rel_max_abs: float


# ONNX Runtime may differ from PyTorch by this many times PyTorch's own float32 error.
NOISE_FLOOR_FACTOR = 2.0
# A float32-vs-float64 difference above this is not rounding noise but a network whose float32
# result cannot be trusted (or that computes something else each call): never a bound.
NOISE_FLOOR_LIMIT = 1e-3


@dataclass
class ParityReport:
    tolerance: float  # on rel_max_abs = max|onnx - torch| / max|torch|, per output
    seed: int
    provider: str
    runs: list[ParityRun] = field(default_factory=list)
    # PyTorch float32 vs float64, same metric: measured only when `tolerance` alone fails
    noise_floor: float | None = None

    @property
    def worst_rel_max_abs(self) -> float:
        return max((run.worst_rel_max_abs for run in self.runs), default=0.0)

    @property
    def effective_tolerance(self) -> float:
        """`tolerance`, or the model's own float32 noise (times the factor) when larger: no
        float32 backend can be held closer to PyTorch than PyTorch is to float64."""
        floor = NOISE_FLOOR_FACTOR * self.noise_floor if self.noise_floor is not None else 0.0
        return max(self.tolerance, floor)

    @property
    def passed(self) -> bool:
        return bool(self.runs) and self.worst_rel_max_abs <= self.effective_tolerance

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "tolerance": self.tolerance,
            "noise_floor": self.noise_floor,
            "noise_floor_factor": NOISE_FLOOR_FACTOR,
            "effective_tolerance": self.effective_tolerance,
            "metric": "max|onnx - torch| / max|torch| per output (rel_max_abs)",
            "worst_rel_max_abs": self.worst_rel_max_abs,
            "seed": self.seed,
            "provider": self.provider,
            "runs": [
                {"batch": r.batch, "worst_rel_max_abs": r.worst_rel_max_abs, "outputs": r.outputs}
                for r in self.runs
            ],
        }


def check_parity(
    reference: nn.Module,
    onnx_path: str | os.PathLike[str],
    inputs: tuple[InputSpec, ...],
    output_names: Sequence[str],
    *,
    batches: Sequence[int],
    tolerance: float,
    seed: int = 0,
    known: Mapping[int, Outputs] | None = None,
    noise_floor: bool = True,
) -> ParityReport:
    """Run seeded random inputs at each batch size through both and compare every output.

    `known` holds PyTorch outputs already computed for `sample_inputs(inputs, seed, batch)`
    (export runs one reference forward anyway), keyed by batch: they are not recomputed. When
    a run exceeds `tolerance`, PyTorch's own float32 error on it (against float64) is measured:
    float32 kernels differ between CPUs (AVX2 / AVX-512), so a deep network's exact bound is
    its own noise floor, not a constant tuned on one machine. `noise_floor=False`: `tolerance`
    is the bound, whatever the noise (a tolerance the user gave).
    """
    report = ParityReport(tolerance=tolerance, seed=seed, provider="CPUExecutionProvider")
    names = [i.name for i in inputs]
    torch_runner = TorchRunner(reference, names, output_names)
    with OrtRunner(os.fspath(onnx_path)) as ort_runner, torch_runner:
        for batch in batches:
            feed = sample_inputs(inputs, seed=seed, batch=batch)
            ref = dict(known[batch]) if known and batch in known else torch_runner.infer(feed)
            got = ort_runner.infer(feed)
            diffs = compare_outputs(ref, got)
            report.runs.append(
                ParityRun(batch, [d.to_dict() for d in diffs], worst_relative(diffs))
            )
            over = report.runs[-1].worst_rel_max_abs > tolerance
            if noise_floor and over and report.noise_floor is None:
                report.noise_floor = _float64_noise_floor(reference, names, output_names, feed, ref)
    return report


def _float64_noise_floor(
    module: nn.Module,
    input_names: Sequence[str],
    output_names: Sequence[str],
    feed: Mapping[str, np.ndarray],
    ref32: Outputs,
) -> float | None:
    """max over outputs of max|torch32 - torch64| / max|torch64| on `feed`. None when it is no
    noise floor: the module cannot run in float64 (e.g. a TorchScript file with float32
    constants baked in), float32 does not repeat its own result (state changing per call), or
    the difference exceeds `NOISE_FLOOR_LIMIT`."""
    wide = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in feed.items()}
    try:
        with TorchRunner(copy.deepcopy(module), input_names, output_names) as runner:
            again = runner.infer(feed)
        with TorchRunner(copy.deepcopy(module).double(), input_names, output_names) as runner:
            ref64 = runner.infer(wide)
    except (RuntimeError, TypeError):  # dtype mismatches inside the module
        return None
    if worst_relative(compare_outputs(ref32, again)) > 0.0:
        return None
    floor = worst_relative(compare_outputs(ref64, {k: ref32[k] for k in ref64}))
    return floor if floor <= NOISE_FLOOR_LIMIT else None
