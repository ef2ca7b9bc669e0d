"""The precision stage's two entry points: `calibrate_onnx` (INT8) and `convert_onnx` (FP16)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import onnx

from sase_deploy._io import check_writable, sha256_file
from sase_deploy._timing import QUIET, StageProgress, StageTimer, rounded
from sase_deploy.artifacts import (
    CalibrationRecord,
    artifact_path,
    calibration_path,
    model_stem,
    read_record,
    write_record,
)
from sase_deploy.calibration import graph, trt_cache
from sase_deploy.calibration.fp16 import convert_fp16, fp16_around_qdq, fp16_keep_list
from sase_deploy.calibration.options import CalibrateOptions, ConvertOptions, PrecisionOptions
from sase_deploy.calibration.qdq import quantize_qdq, small_weighted_nodes
from sase_deploy.calibration.ranges import TensorRanges, collect_ranges
from sase_deploy.calibration.sensitivity import (
    AutoKeepResult,
    Evaluator,
    auto_keep,
    per_layer_ranking,
)
from sase_deploy.calibration.sources import (
    CalibrationSource,
    FixedBatchSource,
    manifest_model_name,
    open_source,
    registry_preprocess,
)
from sase_deploy.errors import UserError
from sase_deploy.graph_io import (
    EXTERNAL_DATA_THRESHOLD,
    canonicalise,
    load_onnx,
    publish,
    save_model,
    save_onnx,
    staging_dir,
)
from sase_deploy.models.spec import Preprocess
from sase_deploy.vocabulary import Task

FP16_CANDIDATE_OPS = (
    "Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Sigmoid",
    "BatchNormalization", "ReduceMean", "ReduceSum", "GlobalAveragePool", "Resize", "Pow", "Sqrt",
)  # fmt: skip
DEFAULT_BATCH = 16


_Options = TypeVar("_Options", bound=PrecisionOptions)


def _load(path: Path) -> onnx.ModelProto:
    """The model at `path`, checked (`graph_io.load_onnx`) and canonicalised with unique node
    names (ORT's quantizer selects nodes by name), whichever exporter wrote it."""
    return canonicalise(load_onnx(path, sort=True))


def _with_model_name(options: _Options, path: Path) -> _Options:
    """`options` naming the registry model: the given one, else the export manifest's."""
    return dataclasses.replace(options, model_name=options.model_name or manifest_model_name(path))


def _task(model: onnx.ModelProto, model_name: str | None) -> Task:
    if model_name is not None:
        from sase_deploy.models.registry import get_model_spec

        return get_model_spec(model_name).task
    dims = model.graph.output[0].type.tensor_type.shape.dim
    return "classification" if len(dims) == 2 else "generation"


def resolve_preprocess(
    model_name: str | None, overrides: Mapping[str, Any] | None
) -> Preprocess | None:
    """Registry defaults for the model, with explicit options on top."""
    base = registry_preprocess(model_name)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    if base is None:
        if "size" not in given:
            return None
        base = Preprocess(size=given["size"])
    return dataclasses.replace(base, **given)


def _open(model: onnx.ModelProto, data: str, options: PrecisionOptions) -> CalibrationSource:
    prep = resolve_preprocess(options.model_name, options.preprocess)
    return open_source(data, model, samples=options.samples, preprocess=prep, seed=options.seed)


def _evaluator(
    model: onnx.ModelProto, source: CalibrationSource, options: PrecisionOptions
) -> Evaluator:
    """What `--auto-keep` scores candidates with (top-1 or PSNR, by the model's task)."""
    task = _task(model, options.model_name)
    return Evaluator.from_source(model, source, task, options.eval_samples)


def _batch_plan(
    source: CalibrationSource, requested: int | None, data: str
) -> tuple[int, list[str]]:
    """The batch to run `source` at (a fixed-batch model's own, else `requested` or 16), and
    notes for the user when that is not what they asked for or samples were left out."""
    if not isinstance(source, FixedBatchSource):
        return requested or DEFAULT_BATCH, []
    notes = []
    if requested is not None and requested != source.batch:
        notes.append(
            f"the model has a fixed batch of {source.batch} (exported without --dynamic-batch), "
            f"so it runs in batches of {source.batch}, not --batch {requested}; export it with "
            "--dynamic-batch to choose the batch"
        )
    if source.dropped:
        notes.append(
            f"{data}: using {source.num_samples} of {source.num_samples + source.dropped} "
            f"samples (whole batches of the model's fixed batch {source.batch})"
        )
    return source.batch, notes


@dataclass
class CalibrationResult:
    int8_onnx: Path
    cache: Path
    json: Path
    method: str
    samples: int
    quantized_nodes: list[str]
    kept_float: dict[str, str]
    cache_tensors: int
    auto_keep: AutoKeepResult | None
    timings: dict[str, float] = field(default_factory=dict)
    batch: int = DEFAULT_BATCH
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "int8_onnx": str(self.int8_onnx),
            "calib_cache": str(self.cache),
            "calib_json": str(self.json),
            "method": self.method,
            "samples": self.samples,
            "batch": self.batch,
            "quantized_nodes": len(self.quantized_nodes),
            "kept_float": self.kept_float,
            "cache_tensors": self.cache_tensors,
            "auto_keep": self.auto_keep.to_dict() if self.auto_keep else None,
            "notes": self.notes,
            "timings_s": rounded(self.timings),
        }


def _artifact_paths(model_path: Path, output_dir: str | Path) -> tuple[Path, Path, Path]:
    """NAME.int8.onnx, NAME.calib.cache and NAME.calib.json in `output_dir` (NAME: `model_stem`,
    so `net.fp32.onnx` calibrates into `net.int8.onnx`); UserError where the model is one of them.
    """
    stem, out_dir = model_stem(model_path), Path(output_dir)
    paths = [calibration_path(out_dir, stem, s) for s in ("int8.onnx", "calib.cache", "calib.json")]
    _not_the_input(model_path, *paths)
    int8, cache, calib_json = paths
    return int8, cache, calib_json


def _not_the_input(model_path: Path, *outputs: Path) -> None:
    """UserError when an output would replace the model it is made from."""
    for out in outputs:
        if out.exists() and os.path.samefile(out, model_path):
            raise UserError(f"{out} would replace the input model; pass another output (-o)")


def calibrate_onnx(
    model_path: str | Path,
    data: str,
    output_dir: str | Path,
    options: CalibrateOptions | None = None,
    *,
    progress: StageProgress = QUIET,
    **overrides: Any,
) -> CalibrationResult:
    """Calibrate MODEL on DATA and write NAME.int8.onnx, NAME.calib.cache, NAME.calib.json.

    `data` is an image folder, a .npy/.npz file or `latent[:SEED]`; the artifacts go into
    `output_dir`. `options` (default `CalibrateOptions()`) says how; `overrides` are
    `CalibrateOptions` fields set on top (`calibrate_onnx(m, d, out, samples=64)`).

    The ranges are collected once (ORT CPU) and feed all three artifacts. With
    `auto_keep_tolerance`, SE gate paths become candidates too and the fewest nodes needed to
    meet the tolerance stay float (see `sensitivity`). `batch` (default 16) is how many samples
    ORT runs at once; a model exported with a fixed batch always runs at its own (`notes` says so
    when that differs from an explicit `batch`). `progress` counts the calibration samples
    (`ranges.collect_ranges`).
    """
    opts = dataclasses.replace(options or CalibrateOptions(), **overrides)
    timer = StageTimer(suffix="_s")
    path = Path(model_path)
    with timer.stage("load"):
        opts.validate()
        named = _load(path)
        paths = _artifact_paths(path, output_dir)
        check_writable(*paths)  # before minutes of calibration, not after
        opts = _with_model_name(opts, path)
        source = _open(named, data, opts)
        run_batch, notes = _batch_plan(source, opts.batch, data)

    ranges: TensorRanges = collect_ranges(
        named, source, opts.method, run_batch, opts.percentile, progress=progress
    )
    timer.timings.update({f"ranges_{k}": v for k, v in ranges.timings.items()})
    # FP16 around INT8: `convert`'s keep-list, ranges included, found once for every quantising
    fp16_keep = None if opts.high_precision == "fp32" else fp16_keep_list(named, amax=ranges.amax)
    candidates, kept, auto = _int8_nodes(named, source, ranges, fp16_keep, opts, timer)
    with timer.stage("quantize"):
        quantized = _quantize(named, ranges, candidates, fp16_keep)

    tensor_names = graph.float_tensor_names(named)
    cache_amax = {k: v for k, v in ranges.amax.items() if k in tensor_names}
    result = CalibrationResult(
        *paths, opts.method, ranges.samples, sorted(candidates), kept, len(cache_amax), auto,
        timer.timings, run_batch, notes,
    )  # fmt: skip
    extra = {"model": str(path), "model_sha256": sha256_file(path),
             "registry_model": opts.model_name, "data": source.describe(),
             "high_precision": opts.high_precision, "min_channels": opts.min_channels}  # fmt: skip
    _write_calibration(result, quantized, ranges, cache_amax, opts.trt_version, extra, timer)
    return result


def _quantize(
    named: onnx.ModelProto,
    ranges: TensorRanges,
    nodes: set[str],
    fp16_keep: Mapping[str, str] | None,
) -> onnx.ModelProto:
    """Q/DQ in front of `nodes`; the rest in FP16 (`fp16_around_qdq`) but `fp16_keep`, or as
    it was (FP32) when `fp16_keep` is None (`--high-precision fp32`)."""
    quantized = quantize_qdq(named, ranges, nodes)
    return quantized if fp16_keep is None else fp16_around_qdq(quantized, fp16_keep)


def _int8_nodes(
    named: onnx.ModelProto,
    source: CalibrationSource,
    ranges: TensorRanges,
    fp16_keep: Mapping[str, str] | None,
    options: CalibrateOptions,
    timer: StageTimer,
) -> tuple[set[str], dict[str, str], AutoKeepResult | None]:
    """Nodes to quantise, nodes kept float (with why), and the `--auto-keep` search if asked."""
    shaped = graph.with_shapes(named)
    weighted = graph.quantizable_nodes(shaped)
    gates = graph.gate_path_nodes(shaped)
    kept: dict[str, str] = {}
    candidates = set(weighted)
    tolerance = options.auto_keep_tolerance
    if not options.quantize_gates and tolerance is None:
        candidates -= gates
        kept.update(
            {n: "SE gate path (pooled descriptors -> sigmoid)" for n in sorted(weighted & gates)}
        )
    small = small_weighted_nodes(shaped, candidates, options.min_channels)
    candidates -= small
    kept.update({n: f"fewer than {options.min_channels} channels" for n in sorted(small)})
    auto: AutoKeepResult | None = None
    if tolerance is not None:
        with timer.stage("sensitivity"):
            evaluator = _evaluator(named, source, options)

            def lowered(nodes: set[str]) -> onnx.ModelProto:
                return _quantize(named, ranges, nodes, fp16_keep)

            ranking = None
            if options.auto_keep_rank == "per-layer":
                ranking = per_layer_ranking(named, evaluator.feeds[0])
            auto = auto_keep(candidates, lowered, evaluator, tolerance, ranking)
            candidates -= set(auto.kept)
            kept.update({n: f"auto-keep: {auto.metric} sensitivity" for n in auto.kept})
    return candidates, kept, auto


def _write_calibration(
    result: CalibrationResult,
    quantized: onnx.ModelProto,
    ranges: TensorRanges,
    cache_amax: dict[str, float],
    trt_version: str,
    extra: dict[str, Any],
    timer: StageTimer,
) -> None:
    """Write the three artifacts as one step: all into a staging folder beside them, then
    renamed, the record (`NAME.calib.json`) last (no set of files is left half written when the
    disk fills or the place is not writable). A large INT8 model keeps its weights in an
    external data file, as `graph_io.save_onnx` does."""
    with staging_dir(result.int8_onnx.parent) as staging:
        staged_model = staging / result.int8_onnx.name
        staged_cache, staged_json = staging / result.cache.name, staging / result.json.name
        with timer.stage("write"):
            save_model(quantized, staged_model, threshold=EXTERNAL_DATA_THRESHOLD)
            staged_cache.write_text(trt_cache.format_cache(cache_amax, result.method, trt_version))
        timer.total()  # before the json, which records it
        summary = result.to_dict()
        record = CalibrationRecord(
            **extra,
            method=result.method,
            percentile=ranges.percentile,
            samples=ranges.samples,
            batch=result.batch,
            symmetric=True,
            trt_cache={
                "file": result.cache.name,
                "header": trt_cache.format_cache({}, result.method, trt_version).strip(),
            },
            **{k: summary[k] for k in ("int8_onnx", "calib_cache")},
            quantized_nodes=result.quantized_nodes,
            **{k: summary[k] for k in ("kept_float", "cache_tensors", "auto_keep", "notes")},
            timings_s=summary["timings_s"],
            tensors={
                name: {"amax": value, "scale": value / 127.0, "min": -value, "max": value}
                for name, value in ranges.amax.items()
            },
        )
        write_record(staged_json, record)
        publish(staged_model, result.int8_onnx)
        os.replace(staged_cache, result.cache)
        os.replace(staged_json, result.json)


def read_calib_json(path: str | Path) -> dict[str, float]:
    """Tensor name -> amax from a `NAME.calib.json`; UserError when it is not one.

    Args:
        path: the calibration record `calibrate` wrote.
    """
    return read_record(Path(path), CalibrationRecord).amax(path)


@dataclass
class ConvertResult:
    output: Path
    precision: str
    kept_fp32: dict[str, str]
    auto_keep: AutoKeepResult | None
    timings: dict[str, float]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": str(self.output),
            "precision": self.precision,
            "kept_fp32": self.kept_fp32,
            "auto_keep": self.auto_keep.to_dict() if self.auto_keep else None,
            "notes": self.notes,
            "timings_s": rounded(self.timings),
        }


def convert_onnx(
    model_path: str | Path,
    output: str | Path | None = None,
    options: ConvertOptions | None = None,
    *,
    progress: StageProgress = QUIET,
    **overrides: Any,
) -> ConvertResult:
    """Write MODEL as FP16 with casts in the graph, float32 IO and an FP32 keep-list.

    `output` defaults to NAME.fp16.onnx beside MODEL. `options` (default `ConvertOptions()`)
    says how; `overrides` are `ConvertOptions` fields set on top
    (`convert_onnx(m, out, calib_json="m.calib.json")`). Ranges for the overflow rule come from
    `calib_json` or, with `data`, a min/max pass (counted in `progress`).
    """
    opts = dataclasses.replace(options or ConvertOptions(), **overrides)
    opts.validate()
    timer = StageTimer(suffix="_s")
    path = Path(model_path)
    if output is not None:
        out = Path(output)
    else:  # `net.onnx` or `net.fp32.onnx` -> `net.fp16.onnx`, never onto the input itself
        out = artifact_path(path.parent, model_stem(path), "fp16", ".onnx")
        _not_the_input(path, out)
    with timer.stage("analyse"):
        named = _load(path)
        check_writable(out)
        opts = _with_model_name(opts, path)
        source, notes, amax = _fp16_ranges(named, opts, progress)
    keep = fp16_keep_list(named, opts.reduce_limit, amax)
    auto: AutoKeepResult | None = None
    if opts.auto_keep_tolerance is not None and source is not None:
        with timer.stage("sensitivity"):
            evaluator = _evaluator(named, source, opts)
            auto = _fp16_auto_keep(named, keep, evaluator, opts.auto_keep_tolerance)
    with timer.stage("convert"):
        converted = convert_fp16(named, keep)
    save_onnx(converted, out)
    timer.total()
    return ConvertResult(out, opts.precision, keep, auto, timer.timings, notes)


def _fp16_ranges(
    named: onnx.ModelProto, options: ConvertOptions, progress: StageProgress = QUIET
) -> tuple[CalibrationSource | None, list[str], dict[str, float] | None]:
    """The data source (with notes on it) if `options.data`, and tensor ranges from the
    calibration json, else from a min/max pass over the data, else None."""
    source, notes = None, []
    if options.data is not None:
        source = _open(named, options.data, options)
        notes = _batch_plan(source, None, options.data)[1]
    if options.auto_keep_tolerance is not None and source is None:
        raise UserError("--auto-keep measures accuracy on data: pass --data too")
    amax = read_calib_json(options.calib_json) if options.calib_json is not None else None
    if amax is None and source is not None:
        amax = collect_ranges(named, source, "minmax", DEFAULT_BATCH, progress=progress).amax
    return source, notes, amax


def _fp16_auto_keep(
    named: onnx.ModelProto, keep: dict[str, str], evaluator: Evaluator, tolerance: float
) -> AutoKeepResult:
    """`--auto-keep` for FP16: adds the nodes it keeps in FP32 to `keep` (with why)."""
    candidates = {
        n.name for n in named.graph.node if n.op_type in FP16_CANDIDATE_OPS and n.name not in keep
    }
    auto = auto_keep(
        candidates, lambda lowered: convert_fp16(named, set(keep) | (candidates - lowered)),
        evaluator, tolerance,
    )  # fmt: skip
    keep.update({n: f"auto-keep: {auto.metric} sensitivity" for n in auto.kept})
    return auto
