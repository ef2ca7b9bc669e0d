"""File-level entry point of the fusion pass (what `sase-deploy fuse` calls).

The file is read and checked by `sase_deploy.graph_io` (as every stage does) and canonicalised
by `fuse_model`, so a TorchScript export, with its run-time shape arithmetic, fuses like the
dynamo export of the same module.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sase_deploy._io import check_writable, write_json_atomic
from sase_deploy.errors import UserError
from sase_deploy.graph_io import load_onnx, save_onnx
from sase_deploy.rewrite.passes import fuse_model
from sase_deploy.rewrite.rule import RewriteRule
from sase_deploy.rewrite.rules import DEFAULT_RULES
from sase_deploy.vocabulary import StageCallback


def fuse_file(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    report_path: str | os.PathLike[str] | None = None,
    rules: Sequence[RewriteRule] = DEFAULT_RULES,
    self_check: bool = True,
    as_functions: bool = False,
    tolerance: float = 1e-5,
    seed: int = 0,
    on_rule: StageCallback | None = None,
) -> dict[str, Any]:
    """Fuse `input_path` into `output_path` (and the report into `report_path`); returns the
    summary dict (`input`, `output`, `report_path`, plus the fusion report)."""
    if tolerance <= 0:
        raise UserError(f"--tolerance must be positive, got {tolerance}")
    out = Path(output_path)
    if out.suffix != ".onnx":
        raise UserError(f"output must end in .onnx, got '{out}'")
    original = load_onnx(input_path, sort=True)
    # both destinations before the work: a bad --report must not leave the fused file behind
    check_writable(out, *([report_path] if report_path is not None else []))
    result = fuse_model(
        original,
        rules=rules,
        self_check=self_check,
        as_functions=as_functions,
        tolerance=tolerance,
        seed=seed,
        on_rule=on_rule,
    )
    save_onnx(result.model, out)
    summary: dict[str, Any] = {
        "command": "fuse",
        "input": str(input_path),
        "output": str(out),
        "report_path": str(report_path) if report_path is not None else None,
        **result.report,
        "nodes_in_file": len(original.graph.node),
    }
    if report_path is not None:
        write_json_atomic(report_path, summary)
    return summary
