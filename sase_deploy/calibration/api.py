"""The precision stage's two entry points: `calibrate_onnx` (INT8) and `convert_onnx` (FP16)."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from sase_deploy._io import atomic_path, check_writable, sha256_file
from sase_deploy.calibration import graph, trt_cache
from sase_deploy.calibration.fp16 import DEFAULT_REDUCE_LIMIT, convert_fp16, fp16_keep_list
from sase_deploy.calibration.qdq import quantize_qdq
from sase_deploy.calibration.ranges import TensorRanges, collect_ranges
from sase_deploy.calibration.sensitivity import AutoKeepResult, Evaluator, Task, auto_keep
from sase_deploy.calibration.sources import (
    CalibrationSource,
    FixedBatchSource,
    manifest_model_name,
    open_source,
    registry_preprocess,
)
from sase_deploy.errors import UserError
from sase_deploy.graph_io import canonicalise, load_onnx, save_onnx
from sase_deploy.models.spec import Preprocess

CALIB_FORMAT = "sase-deploy.calib/1"
FP16_CANDIDATE_OPS = (
    "Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Sigmoid",
    "BatchNormalization", "ReduceMean", "ReduceSum", "GlobalAveragePool", "Resize", "Pow", "Sqrt",
)  # fmt: skip


def _load(path: Path) -> onnx.ModelProto:
    """The model at `path`, checked (`graph_io.load_onnx`) and canonicalised with unique node
    names (ORT's quantizer selects nodes by name), whichever exporter wrote it."""
    return canonicalise(load_onnx(path))


def _model_stem(path: Path) -> str:
    return path.name.removesuffix(".onnx")


def _resolve_model_name(path: Path, model_name: str | None) -> str | None:
    return model_name or manifest_model_name(path)


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


def _open(
    model: onnx.ModelProto,
    path: Path,
    data: str,
    samples: int | None,
    model_name: str | None,
    preprocess: Mapping[str, Any] | None,
    seed: int,
) -> CalibrationSource:
    prep = resolve_preprocess(model_name, preprocess)
    return open_source(data, model, samples=samples, preprocess=prep, seed=seed)


DEFAULT_BATCH = 16


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
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
        }


def _artifact_paths(model_path: Path, output_dir: str | Path) -> tuple[Path, Path, Path]:
    """NAME.int8.onnx, NAME.calib.cache and NAME.calib.json in `output_dir`."""
    stem, out_dir = _model_stem(model_path), Path(output_dir)
    suffixes = ("int8.onnx", "calib.cache", "calib.json")
    int8, cache, calib_json = (out_dir / f"{stem}.{suffix}" for suffix in suffixes)
    return int8, cache, calib_json


def calibrate_onnx(
    model_path: str | Path,
    data: str,
    output_dir: str | Path,
    *,
    method: str = "percentile",
    samples: int | None = 512,
    batch: int | None = None,
    model_name: str | None = None,
    preprocess: Mapping[str, Any] | None = None,
    seed: int = 0,
    percentile: float = 99.99,
    quantize_gates: bool = False,
    auto_keep_tolerance: float | None = None,
    eval_samples: int = 256,
    trt_version: str = trt_cache.DEFAULT_TRT_VERSION,
) -> CalibrationResult:
    """Calibrate MODEL on DATA and write NAME.int8.onnx, NAME.calib.cache, NAME.calib.json.

    The ranges are collected once (ORT CPU) and feed all three artifacts. With
    `auto_keep_tolerance`, SE gate paths become candidates too and the fewest nodes needed to
    meet the tolerance stay float (see `sensitivity`). `batch` (default 16) is how many samples
    ORT runs at once; a model exported with a fixed batch always runs at its own (`notes` says so
    when that differs from an explicit `batch`).
    """
    timings: dict[str, float] = {}
    start = time.perf_counter()
    path = Path(model_path)
    if (batch is not None and batch < 1) or (samples is not None and samples < 1):
        raise UserError("--batch and --samples must be positive integers")
    if method == "percentile" and not 0 < percentile <= 100:
        raise UserError(f"--percentile {percentile:g}: give a value in (0, 100], e.g. 99.99")
    trt_cache.trt_version_code(trt_version)  # validate before any work
    named = _load(path)
    paths = _artifact_paths(path, output_dir)
    check_writable(*paths)  # before minutes of calibration, not after
    model_name = _resolve_model_name(path, model_name)
    source = _open(named, path, data, samples, model_name, preprocess, seed)
    run_batch, notes = _batch_plan(source, batch, data)
    timings["load_s"] = time.perf_counter() - start

    ranges: TensorRanges = collect_ranges(named, source, method, run_batch, percentile)
    timings.update({f"ranges_{k}": v for k, v in ranges.timings.items()})
    candidates, kept, auto = _int8_nodes(
        named, source, ranges, _task(named, model_name), quantize_gates, auto_keep_tolerance,
        eval_samples, timings,
    )  # fmt: skip

    stage = time.perf_counter()
    quantized = quantize_qdq(named, ranges, candidates)
    timings["quantize_s"] = time.perf_counter() - stage

    tensor_names = graph.float_tensor_names(named)
    cache_amax = {k: v for k, v in ranges.amax.items() if k in tensor_names}
    result = CalibrationResult(
        *paths, method, ranges.samples, sorted(candidates), kept, len(cache_amax), auto, timings,
        run_batch, notes,
    )  # fmt: skip
    extra = {"model": str(path), "model_sha256": sha256_file(path), "registry_model": model_name,
             "data": source.describe()}  # fmt: skip
    _write_calibration(result, quantized, ranges, cache_amax, trt_version, extra, start)
    return result


def _int8_nodes(
    named: onnx.ModelProto,
    source: CalibrationSource,
    ranges: TensorRanges,
    task: Task,
    quantize_gates: bool,
    auto_keep_tolerance: float | None,
    eval_samples: int,
    timings: dict[str, float],
) -> tuple[set[str], dict[str, str], AutoKeepResult | None]:
    """Nodes to quantise, nodes kept float (with why), and the `--auto-keep` search if asked."""
    shaped = graph.with_shapes(named)
    weighted = graph.quantizable_nodes(shaped)
    gates = graph.gate_path_nodes(shaped)
    kept: dict[str, str] = {}
    candidates = set(weighted)
    if not quantize_gates and auto_keep_tolerance is None:
        candidates -= gates
        kept.update({n: "SE gate path (pooled descriptors -> sigmoid)" for n in weighted & gates})
    auto: AutoKeepResult | None = None
    if auto_keep_tolerance is not None:
        stage = time.perf_counter()
        evaluator = Evaluator.from_source(named, source, task, eval_samples)
        auto = auto_keep(
            candidates, lambda lowered: quantize_qdq(named, ranges, lowered), evaluator,
            auto_keep_tolerance,
        )  # fmt: skip
        candidates -= set(auto.kept)
        kept.update({n: f"auto-keep: {auto.metric} sensitivity" for n in auto.kept})
        timings["sensitivity_s"] = time.perf_counter() - stage
    return candidates, kept, auto


def _write_calibration(
    result: CalibrationResult,
    quantized: onnx.ModelProto,
    ranges: TensorRanges,
    cache_amax: dict[str, float],
    trt_version: str,
    extra: dict[str, Any],
    start: float,
) -> None:
    """Write the three artifacts as one step: all into temp files, then renamed (no set of
    files is left half written when the disk fills or the place is not writable)."""
    stage = time.perf_counter()
    with (
        atomic_path(result.int8_onnx) as int8_tmp,
        atomic_path(result.cache) as cache_tmp,
        atomic_path(result.json) as json_tmp,
    ):
        onnx.save_model(quantized, int8_tmp)
        cache_tmp.write_text(trt_cache.format_cache(cache_amax, result.method, trt_version))
        result.timings["write_s"] = time.perf_counter() - stage
        result.timings["total_s"] = time.perf_counter() - start
        summary = {k: v for k, v in result.to_dict().items() if k != "calib_json"}
        details = {
            "format": CALIB_FORMAT,
            **{k: v for k, v in extra.items() if k != "data"},
            "method": result.method,
            "percentile": ranges.percentile,
            "data": extra["data"],
            "samples": ranges.samples,
            "batch": result.batch,
            "symmetric": True,
            "trt_cache": {
                "file": result.cache.name,
                "header": trt_cache.format_cache({}, result.method, trt_version).strip(),
            },
            **summary,
            "quantized_nodes": result.quantized_nodes,
            "tensors": {
                name: {"amax": value, "scale": value / 127.0, "min": -value, "max": value}
                for name, value in ranges.amax.items()
            },
        }
        json_tmp.write_text(json.dumps(details, indent=2, sort_keys=False) + "\n")


def read_calib_json(path: str | Path) -> dict[str, float]:
    """Tensor name -> amax from a `NAME.calib.json`."""
    try:
        data = json.loads(Path(path).read_text())
        return {k: float(v["amax"]) for k, v in data["tensors"].items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"cannot read calibration json {path}: {exc}") from exc


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
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
        }


def convert_onnx(
    model_path: str | Path,
    output: str | Path | None = None,
    *,
    precision: str = "fp16",
    reduce_limit: int = DEFAULT_REDUCE_LIMIT,
    calib_json: str | Path | None = None,
    data: str | None = None,
    samples: int | None = 256,
    model_name: str | None = None,
    preprocess: Mapping[str, Any] | None = None,
    seed: int = 0,
    auto_keep_tolerance: float | None = None,
    eval_samples: int = 256,
) -> ConvertResult:
    """Write MODEL as FP16 with casts in the graph, float32 IO and an FP32 keep-list.

    Ranges for the overflow rule come from `calib_json` or, with `data`, a min/max pass.
    """
    if precision != "fp16":
        raise UserError(f"precision '{precision}' is not convertible; use fp16 (INT8: calibrate)")
    timings: dict[str, float] = {}
    start = time.perf_counter()
    path = Path(model_path)
    out = Path(output) if output is not None else path.with_name(f"{_model_stem(path)}.fp16.onnx")
    named = _load(path)
    check_writable(out)
    model_name = _resolve_model_name(path, model_name)
    source, notes = None, []
    if data is not None:
        source = _open(named, path, data, samples, model_name, preprocess, seed)
        notes = _batch_plan(source, None, data)[1]
    if auto_keep_tolerance is not None and source is None:
        raise UserError("--auto-keep measures accuracy on data: pass --data too")
    amax = read_calib_json(calib_json) if calib_json is not None else None
    if amax is None and source is not None:
        amax = collect_ranges(named, source, "minmax", DEFAULT_BATCH).amax
    timings["analyse_s"] = time.perf_counter() - start
    keep = fp16_keep_list(named, reduce_limit, amax)
    auto: AutoKeepResult | None = None
    if auto_keep_tolerance is not None and source is not None:
        stage = time.perf_counter()
        evaluator = Evaluator.from_source(named, source, _task(named, model_name), eval_samples)
        auto = _fp16_auto_keep(named, keep, evaluator, auto_keep_tolerance)
        timings["sensitivity_s"] = time.perf_counter() - stage
    stage = time.perf_counter()
    converted = convert_fp16(named, keep)
    timings["convert_s"] = time.perf_counter() - stage
    save_onnx(converted, out)
    timings["total_s"] = time.perf_counter() - start
    return ConvertResult(out, precision, keep, auto, timings, notes)


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


def finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None
