"""FP16 with casts in the graph (TensorRT 11's strongly-typed networks), float32 IO.

The conversion itself is ONNX Runtime's `convert_float_to_float16` (keep_io_types, node block
list). Written here is only the keep-list: which nodes stay FP32, found by what they compute:

- reductions/pools that sum more than `reduce_limit` elements (FP16 accumulation),
- SASE's normalisation `Σm + eps` and its division (eps underflows, the ratio is ill-conditioned),
- every node producing a tensor whose calibrated |range| exceeds the FP16 maximum.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterable, Mapping

import onnx

from sase_deploy.calibration.graph import (
    large_reductions,
    named_copy,
    normalisation_nodes,
    producers_of,
    with_shapes,
)
from sase_deploy.graph_io import toposorted

FP16_MAX = 65504.0
DEFAULT_REDUCE_LIMIT = 4096


def fp16_keep_list(
    model: onnx.ModelProto,
    reduce_limit: int = DEFAULT_REDUCE_LIMIT,
    amax: Mapping[str, float] | None = None,
) -> dict[str, str]:
    """Node name -> why it stays in FP32. `model` must have unique node names (`named_copy`)."""
    shaped = with_shapes(model)
    keep: dict[str, str] = {}
    for name in sorted(large_reductions(shaped, reduce_limit)):
        keep[name] = f"reduction over more than {reduce_limit} elements"
    for name in sorted(normalisation_nodes(shaped)):
        keep.setdefault(name, "SASE normalisation (sum of masks + eps, division)")
    if amax:
        overflowing = [t for t, v in amax.items() if v > FP16_MAX]
        for name in sorted(producers_of(model, overflowing)):
            keep.setdefault(name, f"calibrated range exceeds FP16 max {FP16_MAX:g}")
    return keep


def convert_fp16(model: onnx.ModelProto, keep: Iterable[str]) -> onnx.ModelProto:
    """FP16 weights and compute, float32 inputs/outputs, `keep` nodes in FP32 behind casts."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    source = named_copy(model)
    keep_list = sorted(set(keep))
    quiet = logging.getLogger("onnxruntime.transformers.float16")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            converted = convert_float_to_float16(
                source, keep_io_types=True, node_block_list=keep_list
            )
    finally:
        quiet.setLevel(level)
    return toposorted(converted)  # the converter appends the input casts after their users


# Q/DQ with FP16 scales (so FP16 in, FP16 out) needs QuantizeLinear / DequantizeLinear-19.
FP16_QDQ_OPSET = 19


def fp16_around_qdq(model: onnx.ModelProto, keep: Iterable[str]) -> onnx.ModelProto:
    """INT8 + FP16: a Q/DQ model whose float parts compute in FP16, as a strongly typed builder
    (TensorRT-RTX, TensorRT >= 11) needs to run them in FP16 at all.

    The Q/DQ scales become FP16 (ModelOpt's `high_precision_dtype="fp16"` layout), so each
    DequantizeLinear hands its consumer FP16 and TensorRT still fuses Q/DQ into INT8 kernels;
    `keep` nodes stay FP32 behind casts and inputs/outputs stay float32 (`convert_fp16`). A
    graph below opset 19 is converted to 19 first (onnx's version converter): FP16 scales are
    not valid before it.

    Args:
        model: the Q/DQ model `quantize_qdq` wrote.
        keep: node names to keep in FP32 (`fp16_keep_list` of the float model).
    """
    from onnx import version_converter

    from sase_deploy.graph_io import opset_version

    if opset_version(model) < FP16_QDQ_OPSET:
        model = version_converter.convert_version(model, FP16_QDQ_OPSET)
    return convert_fp16(model, keep)
