"""`export_model`: MODEL -> checked, simplified, (fused,) parity-tested ONNX plus a manifest.

`export_model` runs one function per stage over an `ExportOptions`: `_load` (resolve MODEL, load
weights, one reference forward), `_export` (torch -> ONNX), `_simplify`, `_fuse`, `_check` (ONNX
checker, then parity on ORT CPU) and `_publish` (manifest, files moved into place).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from sase_deploy._timing import StageTimer, rounded
from sase_deploy.artifacts import ExportManifest, write_record
from sase_deploy.errors import ParityError, UserError, first_line
from sase_deploy.export import graph as graph_ops
from sase_deploy.export.exporters import EXPORTERS, Exporter, ExportFailed, export_onnx
from sase_deploy.export.lowering import PoolInputs, lower_for_export, record_pool_inputs
from sase_deploy.export.manifest import (
    GraphRecord,
    build_manifest,
    failed_path_for,
    manifest_path_for,
)
from sase_deploy.export.parity import ParityReport, check_parity
from sase_deploy.graph_io import (
    EXTERNAL_DATA_THRESHOLD,
    canonicalise,
    name_nodes,
    publish,
    save_model,
    staging_dir,
)
from sase_deploy.models.source import ModelSource, load_weights, resolve_model
from sase_deploy.models.spec import InputSpec, ModelOptions, sample_inputs
from sase_deploy.vocabulary import StageCallback

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


@dataclass(frozen=True, kw_only=True)
class ExportOptions:
    """How `export_model` exports; each field is also one of its keywords.

    Attributes:
        checkpoint: weights to load (torch.save file); None keeps the model's own.
        checkpoint_key: container key holding the state dict (e.g. `g_ema`).
        use_ema: load the EMA copy of the weights when the checkpoint has one.
        unsafe_load: allow pickled code in the checkpoint (trusted files only).
        model_args: keyword arguments for the model factory.
        input_shapes: one shape per input (default: the registry's).
        input_names, output_names: one name per input / output (default: registry, input_N /
            output_N).
        dynamic_batch: make dim 0 of every input and output symbolic; parity at batch 1 and 4.
        opset: ONNX opset, 17 to 20.
        exporter: "dynamo", "torchscript", or "auto" (dynamo, then TorchScript on failure).
        fuse: run the SE-subgraph fusion pass.
        tolerance: parity tolerance on max|onnx - torch| / max|torch|. None: 1e-4, or twice
            PyTorch's own float32 error against float64 where that is larger (measured when
            1e-4 fails: float32 kernels differ by CPU); a value given is taken as it is.
        seed: seed of the parity inputs.
        external_data_threshold: above this many bytes the weights go to `NAME.onnx.data`.
    """

    checkpoint: str | Path | None = None
    checkpoint_key: str | None = None
    use_ema: bool = True
    unsafe_load: bool = False
    model_args: Mapping[str, Any] | None = None
    input_shapes: Sequence[Sequence[int]] | None = None
    input_names: Sequence[str] | None = None
    output_names: Sequence[str] | None = None
    dynamic_batch: bool = False
    opset: int = DEFAULT_OPSET
    exporter: Exporter = "auto"
    fuse: bool = True
    tolerance: float | None = None
    seed: int = 0
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD

    def validate(self) -> None:
        """Raise `UserError` for a value no export could use, before any work."""
        if self.opset not in SUPPORTED_OPSETS:
            raise UserError(
                f"opset {self.opset} is not supported; pass --opset between "
                f"{SUPPORTED_OPSETS.start} and {SUPPORTED_OPSETS.stop - 1} "
                f"(default {DEFAULT_OPSET})"
            )
        if self.exporter not in EXPORTERS:
            raise UserError(
                f"unknown exporter '{self.exporter}'; choose one of {', '.join(EXPORTERS)}"
            )
        if self.tolerance is not None and not self.tolerance >= 0:
            raise UserError(f"--tolerance must be >= 0, got {self.tolerance}")


def export_options(given: ModelOptions, **overrides: Any) -> ExportOptions:
    """`ExportOptions` carrying `given`'s weights, factory arguments and input/output shapes and
    names (what `export`, `compare` and `deploy` share), with `overrides` on top."""
    fields: dict[str, Any] = {
        "checkpoint": given.checkpoint,
        "checkpoint_key": given.checkpoint_key,
        "use_ema": given.use_ema,
        "unsafe_load": given.unsafe_load,
        "model_args": given.model_args,
        "input_shapes": given.input_shapes or None,
        "input_names": given.input_names or None,
        "output_names": given.output_names or None,
    }
    return ExportOptions(**{**fields, **overrides})


@dataclass
class ExportResult:
    """Where the ONNX and manifest went, and the manifest itself."""

    onnx_path: Path
    manifest_path: Path
    manifest: ExportManifest
    passed: bool
    extra_files: list[Path] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": "export",
            "status": "ok" if self.passed else "parity-failed",
            "onnx": str(self.onnx_path),
            "manifest": str(self.manifest_path),
            "files": [str(p) for p in (self.onnx_path, *self.extra_files, self.manifest_path)],
            "exporter": self.manifest.exporter,
            "opset": self.manifest.opset,
            "node_counts": self.manifest.node_counts,
            "parity": self.manifest.parity,
            "fusion": self.manifest.fusion,
            "timings_s": self.manifest.timings_s,
        }


def default_output(model: str | nn.Module) -> Path:
    """`./NAME.onnx` for MODEL: the class name of a module, else the factory or file's name."""
    if isinstance(model, nn.Module):
        return Path(f"{type(model).__name__}.onnx")
    if ":" in model:
        return Path(f"{model.rpartition(':')[2].rpartition('.')[2]}.onnx")
    return Path(f"{Path(model).stem}.onnx")


def export_model(
    model: str | nn.Module,
    output: str | Path | None = None,
    options: ExportOptions | None = None,
    *,
    on_stage: StageCallback | None = None,
    **overrides: Any,
) -> ExportResult:
    """Export MODEL to `output` (.onnx) with a `.manifest.json` beside it.

    MODEL is a registered name, `package.module:factory`, a TorchScript file or an nn.Module
    (not modified). `output` defaults to `./NAME.onnx`. `options` (default `ExportOptions()`)
    says how; `overrides` are `ExportOptions` fields set on top, so
    `export_model("se_resnet50", "m.onnx", dynamic_batch=True)` works without building one.
    `on_stage` is called with each stage's name as it starts (load, export, simplify, fuse,
    check, parity).

    Raises `UserError` for bad input (nothing is written) and `ParityError` when ONNX Runtime
    disagrees with PyTorch beyond the tolerance (the model is then kept as
    `NAME.parity-failed.onnx` with its manifest; `ParityError.details` is `ExportResult.to_dict()`).
    """
    opts = dataclasses.replace(options or ExportOptions(), **overrides)
    out = Path(output) if output is not None else default_output(model)
    if out.suffix != ".onnx":
        raise UserError(f"output '{out}' must end in .onnx; pass -o NAME.onnx")
    opts.validate()
    timer = StageTimer(on_stage)
    with timer.stage("load"):
        loaded = _load(model, opts)
    with timer.stage("export"):
        record = _export(loaded, opts)
    with timer.stage("simplify"):
        _simplify(record)
    if opts.fuse:
        with timer.stage("fuse"):
            _fuse(record)
    with staging_dir(out.parent) as staging:
        staged = staging / out.name
        parity = _check(record, loaded, opts, staged, timer)
        dest, manifest, files = _publish(record, loaded, opts, parity, staged, out, timer)
    manifest_path = write_record(manifest_path_for(dest), manifest)
    result = ExportResult(dest, manifest_path, manifest, parity.passed, files[1:])
    if not parity.passed:
        raise ParityError(
            f"ONNX Runtime differs from PyTorch by {parity.worst_rel_max_abs:.3g} x output scale "
            f"(tolerance {parity.effective_tolerance:.3g}); kept the model as {dest}",
            details=result.to_dict(),
        )
    return result


@dataclass
class _Loaded:
    """MODEL after the load stage: weights in, eval mode, run once at the trace batch."""

    source: ModelSource
    checkpoint_report: dict[str, Any] | None
    trace_batch: int
    output_names: tuple[str, ...]
    example_args: tuple[torch.Tensor, ...]
    known_outputs: dict[int, dict[str, np.ndarray]]  # batch -> PyTorch outputs, for parity
    pool_inputs: PoolInputs  # what the reference forward fed each adaptive pool


def _load(model: str | nn.Module, options: ExportOptions) -> _Loaded:
    """Resolve MODEL, load its weights and run the reference forward (export traces it)."""
    if isinstance(model, nn.Module) and not isinstance(model, torch.jit.ScriptModule):
        model = copy.deepcopy(model)  # baking spectral norm must not touch the caller's model
    source = resolve_model(
        model,
        model_args=options.model_args,
        input_shapes=options.input_shapes,
        input_names=options.input_names,
    )
    if options.dynamic_batch and not source.dynamic_batch_allowed:
        raise UserError(f"model '{source.reference}' has a fixed batch size; drop --dynamic-batch")
    # A registered model that ships trained weights is exported with them unless -c says
    # otherwise, as `compare` and `deploy` use them: the export and its reference agree.
    shipped = source.spec.shipped_checkpoint() if source.spec is not None else None
    checkpoint = options.checkpoint or shipped
    report = load_weights(
        source, checkpoint, options.checkpoint_key, options.use_ema, options.unsafe_load
    )
    trace_batch = TRACE_BATCH_DYNAMIC if options.dynamic_batch else source.inputs[0].shape[0]
    feed = sample_inputs(source.inputs, seed=options.seed, batch=trace_batch)
    with record_pool_inputs(source.module) as pool_inputs:
        outputs = _run_reference(source.module, source.inputs, feed)
    names = tuple(options.output_names or source.output_names or ())
    if not names:
        names = tuple(f"output_{i}" for i in range(len(outputs)))
    if len(names) != len(outputs):
        raise UserError(
            f"{len(names)} output names for {len(outputs)} model outputs; "
            "pass one --output-name per output"
        )
    return _Loaded(
        source=source,
        checkpoint_report=report,
        trace_batch=trace_batch,
        output_names=names,
        example_args=tuple(torch.from_numpy(feed[i.name]) for i in source.inputs),
        known_outputs={trace_batch: {n: t.numpy() for n, t in zip(names, outputs, strict=True)}},
        pool_inputs=pool_inputs,
    )


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


def _export(loaded: _Loaded, options: ExportOptions) -> GraphRecord:
    """torch -> ONNX with the chosen exporter, after lowering what it cannot export."""
    source = loaded.source
    to_export, lowerings = lower_for_export(source.module, loaded.pool_inputs)
    try:
        outcome = export_onnx(
            to_export,
            loaded.example_args,
            input_names=[i.name for i in source.inputs],
            output_names=loaded.output_names,
            opset=options.opset,
            dynamic_batch=options.dynamic_batch,
            exporter=options.exporter,
        )
    except ExportFailed as exc:
        raise UserError(
            f"cannot export '{source.reference}': {exc}; try the other --exporter, drop "
            "--dynamic-batch, or simplify the model's forward"
        ) from None
    # Before simplification: constant folding would bake a shape-static RandomNormal into a
    # constant, hiding the randomness instead of refusing it.
    randoms = graph_ops.random_nodes(outcome.model)
    if randoms:
        raise UserError(
            f"the model draws random numbers in forward ({', '.join(randoms[:3])}); export it "
            "with noise off/fixed or as an input (registered generators: --model-arg "
            "noise=off|seed:N|input)"
        )
    counts = {"exported": graph_ops.node_count(outcome.model)}
    return GraphRecord(outcome.model, outcome, lowerings, counts)


def _simplify(record: GraphRecord) -> None:
    """Fold constants, clean up and name every node the same way whichever exporter ran."""
    record.model = canonicalise(record.model, rename_all=True, strict=True)
    record.node_counts["simplified"] = graph_ops.node_count(record.model)


def _fuse(record: GraphRecord) -> None:
    from sase_deploy.rewrite import fuse_model  # lazy: the rewrite stage imports ORT

    result = fuse_model(record.model, self_check=True, canonical=True)  # canonicalised above
    record.model = name_nodes(result.model)
    record.fusion = {"applied": True, "status": "fused", "report": result.report}


def _check(
    record: GraphRecord, loaded: _Loaded, options: ExportOptions, staged: Path, timer: StageTimer
) -> ParityReport:
    """Save the model to `staged`, run the ONNX checker on it, then compare ORT with PyTorch."""
    batch = loaded.trace_batch
    batches = sorted({*DYNAMIC_PARITY_BATCHES, batch}) if options.dynamic_batch else [batch]
    with timer.stage("check"):
        save_model(record.model, staged, threshold=options.external_data_threshold)
        onnx.checker.check_model(str(staged), full_check=True)  # by path: external data too
    with timer.stage("parity"):
        parity = check_parity(
            loaded.source.module,
            staged,
            loaded.source.inputs,
            loaded.output_names,
            batches=batches,
            tolerance=DEFAULT_TOLERANCE if options.tolerance is None else options.tolerance,
            noise_floor=options.tolerance is None,
            seed=options.seed,
            known=loaded.known_outputs,
        )
    return parity


def _publish(
    record: GraphRecord,
    loaded: _Loaded,
    options: ExportOptions,
    parity: ParityReport,
    staged: Path,
    out: Path,
    timer: StageTimer,
) -> tuple[Path, ExportManifest, list[Path]]:
    """Move the checked model from `staged` to `out` (or its failed name); return where it went,
    its manifest (the caller writes it once the staging folder is gone) and the files moved."""
    dest = out if parity.passed else failed_path_for(out)
    if not parity.passed:  # re-stage under the failed name so a data file matches it
        staged.unlink()
        staged.with_name(f"{out.name}.data").unlink(missing_ok=True)
        staged = staged.with_name(dest.name)
        save_model(record.model, staged, threshold=options.external_data_threshold)
    manifest = build_manifest(
        source=loaded.source,
        checkpoint_report=loaded.checkpoint_report,
        record=record,
        opset=options.opset,
        dynamic_batch=options.dynamic_batch,
        parity=parity,
        dest=dest,
        staged=staged,
        timings=rounded(timer.timings),
    )
    return dest, manifest, publish(staged, dest)


__all__ = [
    "DEFAULT_OPSET",
    "DEFAULT_TOLERANCE",
    "ExportOptions",
    "ExportResult",
    "export_model",
    "failed_path_for",
    "manifest_path_for",
]
