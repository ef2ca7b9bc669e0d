"""Precision preparation for `build`: the ONNX graph each builder needs for FP16 / INT8.

Strongly typed builders (TensorRT-RTX, TensorRT >= 11, ONNX Runtime, bundles for TensorRT 11)
read FP16 casts / INT8 Q/DQ from the graph, so this project's own `convert` / `calibrate` run
first; TensorRT 10 with flags builds the FP32 graph with `--fp16` / `--int8` and, for INT8, the
calibration cache. Calibration ranges come from a `calibrate` output folder or are made now from
a data source.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from sase_deploy._io import sha256_file
from sase_deploy.artifacts import (
    BuiltOnnx,
    CalibrationRecord,
    artifact_path,
    calibration_path,
    model_stem,
    read_record,
)
from sase_deploy.engines.flavours import Flavour
from sase_deploy.engines.request import BuildRequest
from sase_deploy.engines.targets import Target
from sase_deploy.errors import UserError
from sase_deploy.vocabulary import StageCallback


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
    request: BuildRequest,
    source_precision: str,
    out_dir: Path,
    graph_typed: bool,
    stage: StageCallback,
) -> BuiltOnnx:
    """The ONNX to build and how it was made (its sha256 is the caller's to add).

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
        return BuiltOnnx(path=request.onnx, made_by="input")
    if precision == "fp16":
        if not graph_typed:
            return BuiltOnnx(path=request.onnx, made_by="input", flags=("fp16",))
        from sase_deploy.calibration import convert_onnx
        from sase_deploy.engines.cache import share_identical  # cache.py imports this module

        stage("convert fp16")
        calib_json = _calibration_file(request, "calib.json", required=False)
        out = artifact_path(out_dir, stem, "fp16", ".onnx")
        convert_onnx(request.onnx, out, precision="fp16", calib_json=calib_json)
        # one file on disk, two names (hard link) where an identical graph is there already
        twin = share_identical(out, _fp16_twins(request, stem))
        return BuiltOnnx(path=out, made_by="sase-deploy convert --precision fp16",
                         calib_json=calib_json, shared_with=twin)  # fmt: skip
    int8_onnx, cache = _int8_files(request, out_dir, graph_typed, stage)
    if graph_typed and int8_onnx is not None:  # the Q/DQ graph carries the ranges: no cache
        return BuiltOnnx(path=int8_onnx, made_by="sase-deploy calibrate (Q/DQ)")
    # INT8 + FP16 flags: layers left unquantised may run in FP16, as in the typed INT8 graph
    flags = ("int8", "fp16")
    return BuiltOnnx(path=request.onnx, made_by="input", flags=flags, calib_cache=cache)


def _fp16_twins(request: BuildRequest, stem: str) -> list[Path]:
    """Where an identical FP16 graph may already be: `convert`'s default output beside the
    source (what `deploy` writes), and the graphs built for other targets in the same output."""
    beside = artifact_path(request.onnx.parent, stem, "fp16", ".onnx")
    return [beside, *sorted(request.output_dir.glob(f"*/{beside.name}"))]


def _calibration_file(request: BuildRequest, suffix: str, required: bool) -> Path | None:
    if request.calibration is None:
        return None
    path = calibration_path(request.calibration, model_stem(request.onnx), suffix)
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
    recorded = read_record(calib_json, CalibrationRecord).model_sha256
    if recorded is not None and recorded != sha256_file(request.onnx):
        raise UserError(
            f"{calib_json} was calibrated on another model than {request.onnx} (sha256 differs); "
            f"re-run 'sase-deploy calibrate {request.onnx} --data SRC -o {request.calibration}'"
        )


def _int8_files(
    request: BuildRequest, out_dir: Path, graph_typed: bool, stage: StageCallback
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
