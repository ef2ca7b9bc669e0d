"""File-level entry point of the fusion pass (what `sase-deploy fuse` calls)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import onnx

from sase_deploy._io import atomic_path, check_writable, write_json_atomic
from sase_deploy.errors import UserError
from sase_deploy.rewrite.passes import fuse_model
from sase_deploy.rewrite.rule import RewriteRule
from sase_deploy.rewrite.rules import DEFAULT_RULES


def load_onnx(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Load an ONNX file; external data must live inside the model's folder."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such ONNX file: {path}; pass the path of an exported .onnx model")
    try:
        model = onnx.load(os.fspath(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several types for a bad file
        raise UserError(f"{path} is not a readable ONNX model ({type(exc).__name__})") from exc
    folder = path.parent.resolve()
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if not onnx.external_data_helper.uses_external_data(tensor):
            continue
        info = onnx.external_data_helper.ExternalDataInfo(tensor)
        target = (folder / info.location).resolve()
        if folder not in target.parents:
            raise UserError(
                f"{path}: external data '{info.location}' lies outside the model's folder; "
                "move the data next to the model"
            )
    try:
        onnx.external_data_helper.load_external_data_for_model(model, os.fspath(folder))
    except (OSError, ValueError, onnx.checker.ValidationError) as exc:  # missing, short
        raise UserError(
            f"{path}: cannot read its external data ({exc}); keep the data files beside the model"
        ) from exc
    if not model.graph.node:
        raise UserError(f"{path} has an empty graph; pass an exported model")
    check_runnable(model, path)
    return model


# Domains whose ops ONNX Runtime runs without a plug-in (the standard ones and ORT's contrib ops).
RUNNABLE_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")


def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                yield from _all_nodes(sub)


def check_runnable(model: onnx.ModelProto, path: str | os.PathLike[str]) -> None:
    """UserError for a model no backend here can load: an opset newer than this `onnx` knows,
    or an op that is neither standard ONNX (nor ORT contrib) nor a function of the model."""
    newest = onnx.defs.onnx_opset_version()
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx") and entry.version > newest:
            raise UserError(
                f"{path} uses ONNX opset {entry.version}, newer than the {newest} this "
                "installation supports; re-export with --opset 18 (or upgrade onnx/onnxruntime)"
            )
    local = {(f.domain, f.name) for f in model.functions}
    for node in _all_nodes(model.graph):
        if (node.domain, node.op_type) in local:
            continue
        known = node.domain == "com.microsoft" or (
            node.domain in RUNNABLE_DOMAINS
            and onnx.defs.has(node.op_type, "" if node.domain == "ai.onnx" else node.domain)
        )
        if not known:
            op = f"{node.domain}::{node.op_type}" if node.domain else node.op_type
            raise UserError(
                f"{path}: node '{node.name or node.output[0]}' is operator {op}, which is not "
                "standard ONNX nor defined in the model; export without custom ops"
            )


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
    on_rule: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Fuse `input_path` into `output_path` (and the report into `report_path`); returns the
    summary dict (`input`, `output`, `report_path`, plus the fusion report)."""
    if tolerance <= 0:
        raise UserError(f"--tolerance must be positive, got {tolerance}")
    out = Path(output_path)
    if out.suffix != ".onnx":
        raise UserError(f"output must end in .onnx, got '{out}'")
    model = load_onnx(input_path)
    # both destinations before the work: a bad --report must not leave the fused file behind
    check_writable(out, *([report_path] if report_path is not None else []))
    result = fuse_model(
        model,
        rules=rules,
        self_check=self_check,
        as_functions=as_functions,
        tolerance=tolerance,
        seed=seed,
        on_rule=on_rule,
    )
    with atomic_path(out) as tmp:
        onnx.save(result.model, os.fspath(tmp))
    summary: dict[str, Any] = {
        "command": "fuse",
        "input": str(input_path),
        "output": str(out),
        "report_path": str(report_path) if report_path is not None else None,
        **result.report,
    }
    if report_path is not None:
        write_json_atomic(report_path, summary)
    return summary
