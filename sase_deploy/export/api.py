"""`export_model`: MODEL -> checked, simplified, (fused,) parity-tested ONNX plus a manifest."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from sase_deploy import __version__
from sase_deploy._io import sha256_file, write_json_atomic
from sase_deploy.errors import ParityError, UserError, first_line
from sase_deploy.export import graph as graph_ops
from sase_deploy.export.exporters import EXPORTERS, Exporter, ExportFailed, export_onnx
from sase_deploy.export.lowering import lower_for_export, record_pool_inputs
from sase_deploy.export.parity import ParityReport, check_parity
from sase_deploy.export.source import ModelSource, resolve_model
from sase_deploy.graph_io import (
    EXTERNAL_DATA_THRESHOLD,
    canonicalise,
    name_nodes,
    publish,
    save_model,
    staging_dir,
)
from sase_deploy.models.spec import InputSpec, sample_inputs

# Opset 18: the dynamo exporter's native opset (others go through the version converter),
# within the TorchScript exporter's range (<= 20), run by ORT 1.31 and parsed by TensorRT 10.x
# (incl. 10.3 on JetPack 6). 18 is also where ReduceMean takes `axes` as an input, which the
# fusion rules expect.
DEFAULT_OPSET = 18
SUPPORTED_OPSETS = range(17, 21)
DEFAULT_TOLERANCE = 1e-4
DYNAMIC_PARITY_BATCHES = (1, 4)
# torch.export specialises dims of size 1, so dynamic models are traced at batch 4, which is also
# a parity batch: the reference forward of the trace doubles as parity's PyTorch run.
TRACE_BATCH_DYNAMIC = 4
MANIFEST_FORMAT = "sase-deploy.export/1"
FAILED_INFIX = ".parity-failed"

StageCallback = Callable[[str], None]


@dataclass
class ExportResult:
    """Where the ONNX and manifest went, and the manifest itself."""

    onnx_path: Path
    manifest_path: Path
    manifest: dict[str, Any]
    passed: bool
    extra_files: list[Path] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": "export",
            "status": "ok" if self.passed else "parity-failed",
            "onnx": str(self.onnx_path),
            "manifest": str(self.manifest_path),
            "files": [str(p) for p in (self.onnx_path, *self.extra_files, self.manifest_path)],
            **{k: self.manifest[k] for k in ("exporter", "opset", "node_counts", "parity")},
            "fusion": self.manifest["fusion"],
            "timings_s": self.manifest["timings_s"],
        }


def manifest_path_for(onnx_path: Path) -> Path:
    return onnx_path.with_name(onnx_path.name[: -len(".onnx")] + ".manifest.json")


def failed_path_for(onnx_path: Path) -> Path:
    return onnx_path.with_name(onnx_path.name[: -len(".onnx")] + FAILED_INFIX + ".onnx")


def default_output(model: str | nn.Module) -> Path:
    if isinstance(model, nn.Module):
        return Path(f"{type(model).__name__}.onnx")
    if ":" in model:
        return Path(f"{model.rpartition(':')[2].rpartition('.')[2]}.onnx")
    return Path(f"{Path(model).stem}.onnx")


def _validate_options(output: Path, opset: int, exporter: str, tolerance: float) -> None:
    if output.suffix != ".onnx":
        raise UserError(f"output '{output}' must end in .onnx; pass -o NAME.onnx")
    if opset not in SUPPORTED_OPSETS:
        raise UserError(
            f"opset {opset} is not supported; pass --opset between "
            f"{SUPPORTED_OPSETS.start} and {SUPPORTED_OPSETS.stop - 1} (default {DEFAULT_OPSET})"
        )
    if exporter not in EXPORTERS:
        raise UserError(f"unknown exporter '{exporter}'; choose one of {', '.join(EXPORTERS)}")
    if not tolerance >= 0:
        raise UserError(f"--tolerance must be >= 0, got {tolerance}")


def _run_reference(
    module: nn.Module, inputs: tuple[InputSpec, ...], feed: Mapping[str, np.ndarray]
) -> list[torch.Tensor]:
    """One PyTorch forward at the export shape: a model that rejects it is a user error."""
    args = [torch.from_numpy(feed[i.name]) for i in inputs]
    try:
        with torch.no_grad():
            result = module(*args)
    # The model's own code raises whatever it likes on a bad shape (RuntimeError, ValueError,
    # IndexError, AssertionError...); all of them mean "this input does not fit".
    except Exception as exc:
        shapes = ", ".join("x".join(map(str, a.shape)) for a in args)
        raise UserError(
            f"model rejected input shape {shapes}: {first_line(exc)}; "
            "pass --input-shape matching the model"
        ) from None
    flat = list(result) if isinstance(result, list | tuple) else [result]
    if not flat or not all(isinstance(t, torch.Tensor) for t in flat):
        raise UserError(
            f"model returned {type(result).__name__}; export needs a tensor or a tuple/list of "
            "tensors (wrap the model to return them)"
        )
    return flat


def load_weights(
    source: ModelSource,
    checkpoint: str | Path | None,
    key: str | None,
    use_ema: bool,
    unsafe_load: bool,
) -> dict[str, Any] | None:
    """Load `checkpoint` (if given) into `source.module`, bake spectral norm, switch to eval.

    Returns the checkpoint report (None without a checkpoint). Shared by export and compare.
    """
    from sase_deploy.models.checkpoint import bake_spectral_norm, load_checkpoint

    report = None
    if checkpoint is not None:
        if not Path(checkpoint).is_file():
            raise UserError(f"checkpoint '{checkpoint}' does not exist; check the -c path")
        if source.kind == "torchscript":
            raise UserError("a TorchScript file carries its weights; drop -c/--checkpoint")
        report = load_checkpoint(
            source.module, checkpoint, key=key, use_ema=use_ema, unsafe_load=unsafe_load
        ).to_dict()
    if source.kind != "torchscript":
        baked = bake_spectral_norm(source.module)
        if baked and report is not None:
            report["spectral_norm_baked"] = [*report["spectral_norm_baked"], *baked]
    source.module.eval()
    return report


def _fuse(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, Any]]:
    from sase_deploy.rewrite import fuse_model  # lazy: the rewrite stage imports ORT

    result = fuse_model(model, self_check=True)
    return result.model, {"applied": True, "status": "fused", "report": result.report}


def _versions() -> dict[str, str]:
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


def export_model(
    model: str | nn.Module,
    output: str | Path | None = None,
    *,
    checkpoint: str | Path | None = None,
    checkpoint_key: str | None = None,
    use_ema: bool = True,
    unsafe_load: bool = False,
    model_args: Mapping[str, Any] | None = None,
    input_shapes: Sequence[Sequence[int]] | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_batch: bool = False,
    opset: int = DEFAULT_OPSET,
    exporter: Exporter = "auto",
    fuse: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
    on_stage: StageCallback | None = None,
) -> ExportResult:
    """Export MODEL to `output` (.onnx) with a `.manifest.json` beside it.

    MODEL is a registered name, `package.module:factory`, a TorchScript file or an nn.Module.
    Raises `UserError` for bad input (nothing is written) and `ParityError` when ONNX Runtime
    disagrees with PyTorch beyond `tolerance` (the model is then kept as
    `NAME.parity-failed.onnx` with its manifest; `ParityError.details` is `ExportResult.to_dict()`).
    """
    out = Path(output) if output is not None else default_output(model)
    _validate_options(out, opset, exporter, tolerance)
    stage = on_stage or (lambda _name: None)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 3)
        clock = now

    stage("load")
    if isinstance(model, nn.Module) and not isinstance(model, torch.jit.ScriptModule):
        model = copy.deepcopy(model)  # baking spectral norm must not touch the caller's model
    source = resolve_model(
        model, model_args=model_args, input_shapes=input_shapes, input_names=input_names
    )
    if dynamic_batch and not source.dynamic_batch_allowed:
        raise UserError(f"model '{source.reference}' has a fixed batch size; drop --dynamic-batch")
    checkpoint_report = load_weights(source, checkpoint, checkpoint_key, use_ema, unsafe_load)
    reference = source.module
    trace_batch = TRACE_BATCH_DYNAMIC if dynamic_batch else source.inputs[0].shape[0]
    feed = sample_inputs(source.inputs, seed=seed, batch=trace_batch)
    with record_pool_inputs(reference) as pool_inputs:
        ref_outputs = _run_reference(reference, source.inputs, feed)
    names_out = tuple(output_names or source.output_names or ())
    if not names_out:
        names_out = tuple(f"output_{i}" for i in range(len(ref_outputs)))
    if len(names_out) != len(ref_outputs):
        raise UserError(
            f"{len(names_out)} output names for {len(ref_outputs)} model outputs; "
            "pass one --output-name per output"
        )
    example_args = tuple(torch.from_numpy(feed[i.name]) for i in source.inputs)
    known_outputs = {
        trace_batch: {n: t.numpy() for n, t in zip(names_out, ref_outputs, strict=True)}
    }
    lap("load")

    stage("export")
    to_export, lowerings = lower_for_export(reference, pool_inputs)
    try:
        outcome = export_onnx(
            to_export,
            example_args,
            input_names=[i.name for i in source.inputs],
            output_names=names_out,
            opset=opset,
            dynamic_batch=dynamic_batch,
            exporter=exporter,
        )
    except ExportFailed as exc:
        raise UserError(
            f"cannot export '{source.reference}': {exc}; try the other --exporter, drop "
            "--dynamic-batch, or simplify the model's forward"
        ) from None
    exported_nodes = graph_ops.node_count(outcome.model)
    # Before simplification: constant folding would bake a shape-static RandomNormal into a
    # constant, hiding the randomness instead of refusing it.
    randoms = graph_ops.random_nodes(outcome.model)
    if randoms:
        raise UserError(
            f"the model draws random numbers in forward ({', '.join(randoms[:3])}); export it "
            "with noise off/fixed or as an input (registered generators: --model-arg "
            "noise=off|seed:N|input)"
        )
    lap("export")

    stage("simplify")
    final = canonicalise(outcome.model, rename_all=True, strict=True)
    simplified_nodes = graph_ops.node_count(final)
    lap("simplify")

    fusion: dict[str, Any] = {"applied": False, "status": "skipped (--no-fuse)"}
    if fuse:
        stage("fuse")
        final, fusion = _fuse(final)
        final = name_nodes(final)
        lap("fuse")

    batches = sorted({*DYNAMIC_PARITY_BATCHES, trace_batch}) if dynamic_batch else [trace_batch]
    with staging_dir(out.parent) as staging:
        stage("check")
        staged = staging / out.name
        save_model(final, staged, threshold=external_data_threshold)
        onnx.checker.check_model(str(staged), full_check=True)  # by path: external data too
        lap("check")

        stage("parity")
        parity = check_parity(
            reference,
            staged,
            source.inputs,
            names_out,
            batches=batches,
            tolerance=tolerance,
            seed=seed,
            known=known_outputs,
        )
        lap("parity")

        dest = out if parity.passed else failed_path_for(out)
        if not parity.passed:  # re-stage under the failed name so a data file matches it
            staged.unlink()
            data = staging / f"{out.name}.data"
            data.unlink(missing_ok=True)
            staged = staging / dest.name
            save_model(final, staged, threshold=external_data_threshold)
        manifest = _manifest(
            source=source,
            dest=dest,
            staged=staged,
            final=final,
            checkpoint_report=checkpoint_report,
            outcome_exporter=outcome.exporter,
            attempts=outcome.attempts,
            notes=outcome.notes,
            lowerings=[low.to_dict() for low in lowerings],
            node_counts={
                "exported": exported_nodes,
                "simplified": simplified_nodes,
                "final": graph_ops.node_count(final),
            },
            opset=opset,
            dynamic_batch=dynamic_batch,
            fusion=fusion,
            parity=parity,
            timings=timings,
        )
        files = publish(staged, dest)
    manifest_path = write_json_atomic(manifest_path_for(dest), manifest)
    result = ExportResult(dest, manifest_path, manifest, parity.passed, files[1:])
    if not parity.passed:
        raise ParityError(
            f"ONNX Runtime differs from PyTorch by {parity.worst_rel_max_abs:.3g} x output scale "
            f"(tolerance {tolerance:g}); kept the model as {dest}",
            details=result.to_dict(),
        )
    return result


def _manifest(
    *,
    source: ModelSource,
    dest: Path,
    staged: Path,
    final: onnx.ModelProto,
    checkpoint_report: dict[str, Any] | None,
    outcome_exporter: str,
    attempts: list[dict[str, str]],
    notes: list[str],
    lowerings: list[dict[str, str]],
    node_counts: dict[str, int],
    opset: int,
    dynamic_batch: bool,
    fusion: dict[str, Any],
    parity: ParityReport,
    timings: dict[str, float],
) -> dict[str, Any]:
    data_file = staged.parent / f"{staged.name}.data"
    spec = source.spec
    return {
        "format": MANIFEST_FORMAT,
        "status": "ok" if parity.passed else "parity-failed",
        "onnx": dest.name,
        "onnx_sha256": sha256_file(staged),
        "external_data": f"{dest.name}.data" if data_file.exists() else None,
        "source": {
            "model": source.reference,
            "kind": source.kind,
            "model_args": {
                k: repr(v) if not _jsonable(v) else v for k, v in source.model_args.items()
            },
            "family": spec.family if spec else None,
            "task": spec.task if spec else None,
        },
        "checkpoint": checkpoint_report,
        "checkpoint_sha256": checkpoint_report["sha256"] if checkpoint_report else None,
        "inputs": graph_ops.describe_values(list(final.graph.input)),
        "outputs": graph_ops.describe_values(list(final.graph.output)),
        "dynamic_batch": dynamic_batch,
        "opset": opset,
        "ir_version": final.ir_version,
        "exporter": outcome_exporter,
        "exporter_failures": attempts,
        "notes": notes,
        "lowerings": lowerings,
        "simplifier": "onnx-graphsurgeon fold_constants + cleanup + toposort",
        "fusion": fusion,
        "node_counts": node_counts,
        "ops": graph_ops.op_histogram(final),
        "parity": parity.to_dict(),
        "versions": _versions(),
        "timings_s": timings,
    }


def _jsonable(value: Any) -> bool:
    return isinstance(value, str | int | float | bool | type(None)) or (
        isinstance(value, list | tuple) and all(_jsonable(v) for v in value)
    )


__all__ = [
    "DEFAULT_OPSET",
    "DEFAULT_TOLERANCE",
    "ExportResult",
    "export_model",
    "failed_path_for",
    "manifest_path_for",
]
