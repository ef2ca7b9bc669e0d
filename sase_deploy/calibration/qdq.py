"""The explicit-INT8 (Q/DQ) model TensorRT accepts, written by ORT's `quantize_static`.

Settings for TensorRT: QDQ format, signed INT8 with zero point 0 for activations and weights
(`ActivationSymmetric`/`WeightSymmetric`), per-channel weights, per-tensor activations, Q/DQ on
the *inputs* of the selected nodes only (outputs stay float so TRT fuses Conv+BN+ReLU+Add), bias
left in float. Which nodes are selected is decided by `sase_deploy.calibration.graph`.
Ranges come from `collect_ranges` through ORT's calibration-cache file, so the model is not
calibrated a second time.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx

from sase_deploy.calibration.graph import WEIGHTED_OPS
from sase_deploy.calibration.ranges import TensorRanges

QUANTIZED_OP_TYPES = (*WEIGHTED_OPS, "Add")


def quantize_qdq(
    model: onnx.ModelProto, ranges: TensorRanges, nodes: Iterable[str]
) -> onnx.ModelProto:
    """Insert symmetric INT8 Q/DQ pairs in front of `nodes` (names in `model`)."""
    import logging

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data

    nodes = sorted(set(nodes))
    if not nodes:
        return onnx.ModelProto.FromString(model.SerializeToString())
    # ORT's cache format: symmetric (lowest, highest) per tensor, labelled MinMax because the
    # ranges are final (no further calibration happens).
    tensors = TensorsData(
        CalibrationMethod.MinMax,
        {
            name: (np.array(-value, dtype=np.float32), np.array(value, dtype=np.float32))
            for name, value in ranges.amax.items()
        },
    )
    quant_logger = logging.getLogger()
    previous_level = quant_logger.level
    with (
        tempfile.TemporaryDirectory(prefix="sase-qdq-") as tmp,
        contextlib.redirect_stdout(sys.stderr),
    ):
        cache = Path(tmp) / "ranges.json"
        save_tensors_data(tensors, cache)
        out = Path(tmp) / "model.int8.onnx"
        quant_logger.setLevel(logging.ERROR)  # "please pre-process" warnings: see README
        try:
            quantize_static(
                model,
                out,
                calibration_data_reader=None,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(QUANTIZED_OP_TYPES),
                per_channel=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                nodes_to_quantize=nodes,
                calibrate_method=CalibrationMethod.MinMax,
                calibration_cache_path=cache,
                extra_options={
                    "ActivationSymmetric": True,
                    "WeightSymmetric": True,
                    "QuantizeBias": False,
                    "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OP_TYPES),
                    "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1, "Gemm": 0},
                },
            )
        finally:
            quant_logger.setLevel(previous_level)
        return onnx.load(out)


def qdq_pairs(model: onnx.ModelProto) -> list[dict[str, object]]:
    """Every QuantizeLinear/DequantizeLinear with its zero point(s) and scale shape."""
    consts = {init.name: onnx.numpy_helper.to_array(init) for init in model.graph.initializer}
    result: list[dict[str, object]] = []
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        scale = consts.get(node.input[1])
        zero = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        result.append(
            {
                "op": node.op_type,
                "input": node.input[0],
                "scale_shape": list(scale.shape) if scale is not None else None,
                "zero_point_max_abs": int(np.abs(zero).max()) if zero is not None else 0,
                "zero_dtype": str(zero.dtype) if zero is not None else None,
                "is_weight": node.input[0] in consts,
            }
        )
    return result
