"""The export manifest (`NAME.manifest.json`): where the ONNX came from and how it was checked."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import torch

from sase_deploy import __version__
from sase_deploy._io import sha256_file
from sase_deploy.artifacts import ExportManifest, manifest_path
from sase_deploy.export import graph as graph_ops
from sase_deploy.export.exporters import ExportOutcome
from sase_deploy.export.lowering import Lowering
from sase_deploy.export.parity import ParityReport
from sase_deploy.models.source import ModelSource

FAILED_INFIX = ".parity-failed"


def manifest_path_for(onnx_path: Path) -> Path:
    """`NAME.onnx` -> `NAME.manifest.json` beside it (`artifacts.manifest_path`)."""
    return manifest_path(onnx_path)


def failed_path_for(onnx_path: Path) -> Path:
    """`NAME.onnx` -> `NAME.parity-failed.onnx`, where a model that failed parity is kept."""
    return onnx_path.with_name(onnx_path.name[: -len(".onnx")] + FAILED_INFIX + ".onnx")


@dataclass
class GraphRecord:
    """The ONNX model as the export stages change it, with what the manifest says of them."""

    model: onnx.ModelProto
    outcome: ExportOutcome  # the exporter's own result (which exporter, failed tries, notes)
    lowerings: list[Lowering]
    node_counts: dict[str, int]  # per stage, in order: exported, simplified, final
    fusion: dict[str, Any] = field(
        default_factory=lambda: {"applied": False, "status": "skipped (--no-fuse)"}
    )


def build_manifest(
    *,
    source: ModelSource,
    checkpoint_report: dict[str, Any] | None,
    record: GraphRecord,
    opset: int,
    dynamic_batch: bool,
    parity: ParityReport,
    dest: Path,
    staged: Path,
    timings: dict[str, float],
) -> ExportManifest:
    """The manifest for `record.model`, saved at `staged` and about to be published as `dest`.

    Args:
        source: the resolved MODEL; checkpoint_report: `load_weights`'s report (or None).
        record: the final graph and its history; opset, dynamic_batch: as exported.
        parity: the ONNX Runtime vs PyTorch comparison; timings: seconds per stage.
    """
    final = record.model
    data_file = staged.parent / f"{staged.name}.data"
    spec = source.spec
    model_args = {k: v if _jsonable(v) else repr(v) for k, v in source.model_args.items()}
    return ExportManifest(
        status="ok" if parity.passed else "parity-failed",
        onnx=dest.name,
        sha256=sha256_file(staged),
        external_data=f"{dest.name}.data" if data_file.exists() else None,
        source={
            "model": source.reference,
            "kind": source.kind,
            "model_args": model_args,
            "family": spec.family if spec else None,
            "task": spec.task if spec else None,
        },
        checkpoint=checkpoint_report,
        checkpoint_sha256=checkpoint_report["sha256"] if checkpoint_report else None,
        inputs=graph_ops.describe_values(list(final.graph.input)),
        outputs=graph_ops.describe_values(list(final.graph.output)),
        dynamic_batch=dynamic_batch,
        opset=opset,
        ir_version=final.ir_version,
        exporter=record.outcome.exporter,
        exporter_failures=record.outcome.attempts,
        notes=record.outcome.notes,
        lowerings=[low.to_dict() for low in record.lowerings],
        simplifier="onnx-graphsurgeon fold_constants + cleanup + toposort",
        fusion=record.fusion,
        node_counts={**record.node_counts, "final": graph_ops.node_count(final)},
        ops=graph_ops.op_histogram(final),
        parity=parity.to_dict(),
        versions=versions(),
        timings_s=timings,
    )


def versions() -> dict[str, str]:
    """Versions of the packages that made the export (so a diff between two is explained)."""
    import onnx_graphsurgeon
    import onnxruntime
    import onnxscript

    return {
        "sase_deploy": __version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxscript": onnxscript.__version__,
        "onnx_graphsurgeon": onnx_graphsurgeon.__version__,
    }


def _jsonable(value: Any) -> bool:
    return isinstance(value, str | int | float | bool | type(None)) or (
        isinstance(value, list | tuple) and all(_jsonable(v) for v in value)
    )
