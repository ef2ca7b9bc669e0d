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

from sase_deploy._io import atomic_path, sha256_file, write_json_atomic
from sase_deploy.calibration import graph, trt_cache
from sase_deploy.calibration.fp16 import DEFAULT_REDUCE_LIMIT, convert_fp16, fp16_keep_list
from sase_deploy.calibration.qdq import quantize_qdq
from sase_deploy.calibration.ranges import TensorRanges, collect_ranges
from sase_deploy.calibration.sensitivity import AutoKeepResult, Evaluator, Task, auto_keep
from sase_deploy.calibration.sources import (
    CalibrationSource,
    manifest_model_name,
    open_source,
    registry_preprocess,
)
from sase_deploy.errors import UserError
from sase_deploy.models.spec import Preprocess

CALIB_FORMAT = "sase-deploy.calib/1"
FP16_CANDIDATE_OPS = (
    "Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Sigmoid",
    "BatchNormalization", "ReduceMean", "ReduceSum", "GlobalAveragePool", "Resize", "Pow", "Sqrt",
)  # fmt: skip


def load_onnx(path: str | Path) -> onnx.ModelProto:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"ONNX model {path} not found; export one with 'sase-deploy export'")
    try:
        return onnx.load(path)
    except Exception as exc:
        raise UserError(f"cannot read ONNX model {path}: {exc}") from exc


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "int8_onnx": str(self.int8_onnx),
            "calib_cache": str(self.cache),
            "calib_json": str(self.json),
            "method": self.method,
            "samples": self.samples,
            "quantized_nodes": len(self.quantized_nodes),
            "kept_float": self.kept_float,
            "cache_tensors": self.cache_tensors,
            "auto_keep": self.auto_keep.to_dict() if self.auto_keep else None,
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
        }


def calibrate_onnx(
    model_path: str | Path,
    data: str,
    output_dir: str | Path,
    *,
    method: str = "percentile",
    samples: int | None = 512,
    batch: int = 16,
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
    meet the tolerance stay float (see `sensitivity`).
    """
    timings: dict[str, float] = {}
    start = time.perf_counter()
    path = Path(model_path)
    if batch < 1 or (samples is not None and samples < 1):
        raise UserError("--batch and --samples must be positive integers")
    trt_cache.trt_version_code(trt_version)  # validate before any work
    model = load_onnx(path)
    model_name = _resolve_model_name(path, model_name)
    named = graph.named_copy(model)
    source = _open(named, path, data, samples, model_name, preprocess, seed)
    timings["load_s"] = time.perf_counter() - start

    ranges: TensorRanges = collect_ranges(named, source, method, batch, percentile)
    timings.update({f"ranges_{k}": v for k, v in ranges.timings.items()})

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
        evaluator = Evaluator.from_source(named, source, _task(named, model_name), eval_samples)
        auto = auto_keep(
            candidates, lambda lowered: quantize_qdq(named, ranges, lowered), evaluator,
            auto_keep_tolerance,
        )  # fmt: skip
        candidates -= set(auto.kept)
        kept.update({n: f"auto-keep: {auto.metric} sensitivity" for n in auto.kept})
        timings["sensitivity_s"] = time.perf_counter() - stage

    stage = time.perf_counter()
    quantized = quantize_qdq(named, ranges, candidates)
    timings["quantize_s"] = time.perf_counter() - stage

    tensor_names = graph.float_tensor_names(model)
    cache_amax = {k: v for k, v in ranges.amax.items() if k in tensor_names}
    stem = _model_stem(path)
    out_dir = Path(output_dir)
    int8_path = out_dir / f"{stem}.int8.onnx"
    cache_path = out_dir / f"{stem}.calib.cache"
    json_path = out_dir / f"{stem}.calib.json"
    stage = time.perf_counter()
    with atomic_path(int8_path) as tmp:
        onnx.save_model(quantized, tmp)
    trt_cache.write_cache(cache_path, cache_amax, method, trt_version)
    timings["write_s"] = time.perf_counter() - stage
    timings["total_s"] = time.perf_counter() - start
    result = CalibrationResult(
        int8_path, cache_path, json_path, method, ranges.samples, sorted(candidates), kept,
        len(cache_amax), auto, timings,
    )  # fmt: skip
    write_json_atomic(
        json_path,
        {
            "format": CALIB_FORMAT,
            "model": str(path),
            "model_sha256": sha256_file(path),
            "registry_model": model_name,
            "method": method,
            "percentile": ranges.percentile,
            "data": source.describe(),
            "samples": ranges.samples,
            "batch": batch,
            "symmetric": True,
            "trt_cache": {
                "file": cache_path.name,
                "header": trt_cache.format_cache({}, method, trt_version).strip(),
            },
            **{k: v for k, v in result.to_dict().items() if k not in ("calib_json",)},
            "quantized_nodes": sorted(candidates),
            "tensors": {
                name: {"amax": value, "scale": value / 127.0, "min": -value, "max": value}
                for name, value in ranges.amax.items()
            },
        },
    )
    return result


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": str(self.output),
            "precision": self.precision,
            "kept_fp32": self.kept_fp32,
            "auto_keep": self.auto_keep.to_dict() if self.auto_keep else None,
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
    model = load_onnx(path)
    model_name = _resolve_model_name(path, model_name)
    named = graph.named_copy(model)
    source = None
    if data is not None:
        source = _open(named, path, data, samples, model_name, preprocess, seed)
    if auto_keep_tolerance is not None and source is None:
        raise UserError("--auto-keep measures accuracy on data: pass --data too")
    amax = read_calib_json(calib_json) if calib_json is not None else None
    if amax is None and source is not None:
        amax = collect_ranges(named, source, "minmax", 16).amax
    timings["analyse_s"] = time.perf_counter() - start
    keep = fp16_keep_list(named, reduce_limit, amax)
    auto: AutoKeepResult | None = None
    if auto_keep_tolerance is not None and source is not None:
        stage = time.perf_counter()
        evaluator = Evaluator.from_source(named, source, _task(named, model_name), eval_samples)
        candidates = {
            n.name
            for n in named.graph.node
            if n.op_type in FP16_CANDIDATE_OPS and n.name not in keep
        }
        auto = auto_keep(
            candidates, lambda lowered: convert_fp16(named, set(keep) | (candidates - lowered)),
            evaluator, auto_keep_tolerance,
        )  # fmt: skip
        keep.update({n: f"auto-keep: {auto.metric} sensitivity" for n in auto.kept})
        timings["sensitivity_s"] = time.perf_counter() - stage
    stage = time.perf_counter()
    converted = convert_fp16(named, keep)
    timings["convert_s"] = time.perf_counter() - stage
    with atomic_path(out) as tmp:
        onnx.save_model(converted, tmp)
    timings["total_s"] = time.perf_counter() - start
    return ConvertResult(out, precision, keep, auto, timings)


def finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None
