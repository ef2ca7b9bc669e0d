"""Built-in parity: the exported file on ONNX Runtime CPU against the PyTorch model."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from sase_deploy.engines.base import Outputs
from sase_deploy.engines.ort import OrtRunner
from sase_deploy.engines.torch_runner import TorchRunner
from sase_deploy.models.spec import InputSpec, sample_inputs
from sase_deploy.report.compare import compare_outputs, worst_relative


@dataclass
class ParityRun:
    batch: int
    outputs: list[dict[str, Any]]  # OutputDiff.to_dict() per output
    worst_rel_max_abs: float


@dataclass
class ParityReport:
    tolerance: float  # on rel_max_abs = max|onnx - torch| / max|torch|, per output
    seed: int
    provider: str
    runs: list[ParityRun] = field(default_factory=list)

    @property
    def worst_rel_max_abs(self) -> float:
        return max((run.worst_rel_max_abs for run in self.runs), default=0.0)

    @property
    def passed(self) -> bool:
        return bool(self.runs) and self.worst_rel_max_abs <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "tolerance": self.tolerance,
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
) -> ParityReport:
    """Run seeded random inputs at each batch size through both and compare every output.

    `known` holds PyTorch outputs already computed for `sample_inputs(inputs, seed, batch)`
    (export runs one reference forward anyway), keyed by batch: they are not recomputed.
    """
    report = ParityReport(tolerance=tolerance, seed=seed, provider="CPUExecutionProvider")
    torch_runner = TorchRunner(reference, [i.name for i in inputs], output_names)
    with OrtRunner(os.fspath(onnx_path)) as ort_runner, torch_runner:
        for batch in batches:
            feed = sample_inputs(inputs, seed=seed, batch=batch)
            ref = dict(known[batch]) if known and batch in known else torch_runner.infer(feed)
            got = ort_runner.infer(feed)
            diffs = compare_outputs(ref, got)
            report.runs.append(
                ParityRun(batch, [d.to_dict() for d in diffs], worst_relative(diffs))
            )
    return report
