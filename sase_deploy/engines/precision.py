"""Precision preparation for `build`: the ONNX graph each builder needs for FP16 / INT8.

Strongly typed builders (TensorRT-RTX, TensorRT >= 11, ONNX Runtime, bundles for TensorRT 11)
read FP16 casts / INT8 Q/DQ from the graph, so this project's own `convert` / `calibrate` run
first; TensorRT 10 with flags builds the FP32 graph with `--fp16` / `--int8` and, for INT8, the
calibration cache. Calibration ranges come from a `calibrate` output folder or are made now from
a data source.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from sase_deploy._io import sha256_file
from sase_deploy.engines.flavours import Flavour
from sase_deploy.engines.targets import Target
from sase_deploy.errors import UserError

if TYPE_CHECKING:  # build.py imports this module
    from sase_deploy.engines.build import BuildRequest

Stage = Callable[[str], None]


def graph_precision(model: onnx.ModelProto) -> str:
    """ "int8" when the graph holds Q/DQ, "fp16" when it computes in float16, else "fp32"."""
    ops = {node.op_type for node in model.graph.node}
    if {"QuantizeLinear", "DequantizeLinear"} & ops:
        return "int8"
    half = onnx.TensorProto.FLOAT16
    casts_to_half = any(
        n.op_type == "Cast" and any(a.name == "to" and a.i == half for a in n.attribute)
        for n in model.graph.node
    )
    if casts_to_half or any(init.data_type == half for init in model.graph.initializer):
        return "fp16"
    return "fp32"


def model_stem(path: Path) -> str:
    """The model name of an ONNX path, without `.onnx` and a precision suffix: the stem that
    calibration files (`<stem>.calib.json`, …) and artifacts (`<stem>.<precision>.*`) share.

    Args:
        path: an ONNX file, e.g. `net.fp16.onnx` -> `net`.
    """
    name = path.name.removesuffix(".onnx")
    for suffix in (".fp16", ".int8", ".fp32"):
        name = name.removesuffix(suffix)
    return name


def reads_typed_graph(backend: str, flavour: Flavour | None, target: Target) -> bool:
    """True when the builder takes precision from the graph (FP16 casts / Q/DQ).

    Args:
        backend: the backend `plan_backend` chose (`tensorrt`, `tensorrt-rtx`, `onnxruntime`,
            `bundle`).
        flavour: the local TensorRT flavour, None where the backend needs none.
        target: the target; a bundle follows the device's TensorRT (typed from 11, or unknown).
    """
    if backend == "bundle":
        return not target.tensorrt or int(target.tensorrt.split(".")[0]) >= 11
    return backend != "tensorrt" or bool(flavour and flavour.strongly_typed_only)


def prepare_onnx(
    request: BuildRequest, source_precision: str, out_dir: Path, graph_typed: bool, stage: Stage
) -> tuple[Path, dict[str, Any]]:
    """The ONNX to build and how it was made.

    Args:
        request: the build request (its onnx, precision, calibration, data and samples).
        source_precision: `graph_precision` of the request's ONNX.
        out_dir: folder for converted / calibrated graphs.
        graph_typed: the builder takes precision from the graph (TensorRT-RTX, TensorRT >= 11,
            ONNX Runtime), so FP16 / INT8 graphs are made here; otherwise (TensorRT 10 flags)
            the FP32 graph is built with flags, INT8 with the calibration cache.
        stage: called with the name of each slow step as it starts.
    """
    precision, stem = request.precision, model_stem(request.onnx)
    if source_precision == precision or precision == "fp32":
        return request.onnx, {"made_by": "input"}
    if precision == "fp16":
        if not graph_typed:
            return request.onnx, {"made_by": "input", "flags": ["fp16"]}
        from sase_deploy.calibration import convert_onnx
        from sase_deploy.engines.cache import share_identical  # cache.py imports this module

        stage("convert fp16")
        calib_json = _calibration_file(request, "calib.json", required=False)
        out = out_dir / f"{stem}.fp16.onnx"
        convert_onnx(request.onnx, out, precision="fp16", calib_json=calib_json)
        made = {"made_by": "sase-deploy convert --precision fp16", "calib_json": calib_json}
        twin = share_identical(out, _fp16_twins(request, stem))
        if twin is not None:  # one file on disk, two names (hard link)
            made["shared_with"] = twin
        return out, made
    int8_onnx, cache = _int8_files(request, out_dir, graph_typed, stage)
    if graph_typed and int8_onnx is not None:  # the Q/DQ graph carries the ranges: no cache
        return int8_onnx, {"made_by": "sase-deploy calibrate (Q/DQ)"}
    return request.onnx, {"made_by": "input", "flags": ["int8"], "calib_cache": cache}


def _fp16_twins(request: BuildRequest, stem: str) -> list[Path]:
    """Where an identical FP16 graph may already be: `convert`'s default output beside the
    source (what `deploy` writes), and the graphs built for other targets in the same output."""
    beside = request.onnx.with_name(f"{stem}.fp16.onnx")
    return [beside, *sorted(request.output_dir.glob(f"*/{stem}.fp16.onnx"))]


def _calibration_file(request: BuildRequest, suffix: str, required: bool) -> Path | None:
    if request.calibration is None:
        return None
    path = request.calibration / f"{model_stem(request.onnx)}.{suffix}"
    if path.is_file():
        return path
    if required:
        raise UserError(
            f"{path} not found; run 'sase-deploy calibrate {request.onnx} --data SRC "
            f"-o {request.calibration}' first"
        )
    return None


def _check_calibration_model(request: BuildRequest) -> None:
    """Ranges calibrated on another model (its sha256 in NAME.calib.json) are refused."""
    calib_json = _calibration_file(request, "calib.json", required=False)
    if calib_json is None:
        return
    try:
        recorded = json.loads(calib_json.read_text()).get("model_sha256")
    except (OSError, ValueError, AttributeError):
        raise UserError(f"{calib_json} is not a calibration record; re-run calibrate") from None
    if recorded is not None and recorded != sha256_file(request.onnx):
        raise UserError(
            f"{calib_json} was calibrated on another model than {request.onnx} (sha256 differs); "
            f"re-run 'sase-deploy calibrate {request.onnx} --data SRC -o {request.calibration}'"
        )


def _int8_files(
    request: BuildRequest, out_dir: Path, graph_typed: bool, stage: Stage
) -> tuple[Path | None, Path | None]:
    """(Q/DQ ONNX, TensorRT-10 cache) from --calibration, or made from --data. A folder needs
    only what the builder reads: the Q/DQ graph when typed, else the cache (Jetson bundles)."""
    if request.calibration is not None:
        _check_calibration_model(request)
        int8 = _calibration_file(request, "int8.onnx", required=graph_typed)
        cache = _calibration_file(request, "calib.cache", required=not graph_typed)
        return int8, cache
    if request.data is None:
        raise UserError(
            "INT8 needs calibration ranges: pass --calibration DIR (from "
            "'sase-deploy calibrate') or --data SRC to calibrate now"
        )
    from sase_deploy.calibration import calibrate_onnx

    stage("calibrate int8")
    result = calibrate_onnx(
        request.onnx, request.data, out_dir / "calibration", samples=request.samples
    )
    return result.int8_onnx, result.cache
