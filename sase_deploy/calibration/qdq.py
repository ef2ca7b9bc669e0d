"""The explicit-INT8 (Q/DQ) model TensorRT accepts, written by ORT's `quantize_static`.

Settings for TensorRT: QDQ format, signed INT8 with zero point 0 for activations and weights
(`ActivationSymmetric`/`WeightSymmetric`), per-channel weights, per-tensor activations, Q/DQ on
the *inputs* of the selected nodes only (outputs stay float so TRT fuses Conv+BN+ReLU+Add), bias
left in float. A residual Add gets Q/DQ on its non-fusible input only: the input a Conv writes
for that Add alone stays float so TensorRT folds the Add into the Conv (`fusible_add_inputs`,
as ModelOpt places them); ORT's quantizer quantises both, and the pair is taken off after.
Which nodes are selected is decided by `sase_deploy.calibration.graph`.
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
        return drop_input_qdq(onnx.load(out), fusible_add_inputs(model, nodes))


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


FUSIBLE_PRODUCERS = ("Conv", "ConvTranspose")


def fusible_add_inputs(model: onnx.ModelProto, adds: Iterable[str]) -> dict[str, str]:
    """Residual Add name -> the input TensorRT folds into its producer's epilogue (a Conv output
    read by that Add only), which therefore gets no Q/DQ: a quantised Add input would make the
    Conv write INT8 and break the fusion (ModelOpt quantises only the other input). Of two
    fusible inputs the later Conv (the main branch, after a downsampling shortcut) is chosen.

    Args:
        model: the float model with unique node names.
        adds: names of the residual Adds being quantised.
    """
    position = {out: (i, n) for i, n in enumerate(model.graph.node) for out in n.output}
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    outputs = {o.name for o in model.graph.output}
    wanted = set(adds)
    found: dict[str, str] = {}
    for node in model.graph.node:
        if node.name not in wanted:
            continue
        fusible = [
            (position[t][0], t)
            for t in node.input
            if t in position
            and position[t][1].op_type in FUSIBLE_PRODUCERS
            and readers.get(t) == 1
            and t not in outputs
        ]
        if fusible:
            found[node.name] = max(fusible)[1]
    return found


def drop_input_qdq(model: onnx.ModelProto, inputs: dict[str, str]) -> onnx.ModelProto:
    """`model` with node `n` reading float `tensor` again for each `n -> tensor` of `inputs`
    (the Q -> DQ pair in front of it removed where nothing else reads it)."""
    dq_of = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    q_of = {n.output[0]: n for n in model.graph.node if n.op_type == "QuantizeLinear"}
    for node in (n for n in model.graph.node if n.name in inputs):
        for i, name in enumerate(node.input):
            dq = dq_of.get(name)
            q = q_of.get(dq.input[0]) if dq is not None else None
            if q is not None and q.input[0] == inputs[node.name]:
                node.input[i] = inputs[node.name]
    read = {name for node in model.graph.node for name in node.input}
    read |= {o.name for o in model.graph.output}
    keep = []
    for node in model.graph.node:  # DQs nobody reads, then the Qs only they read
        if node.op_type == "DequantizeLinear" and node.output[0] not in read:
            continue
        keep.append(node)
    read = {name for node in keep for name in node.input} | {o.name for o in model.graph.output}
    keep = [n for n in keep if n.op_type != "QuantizeLinear" or n.output[0] in read]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    read = {name for node in keep for name in node.input}
    unused = [init for init in model.graph.initializer if init.name not in read]
    for init in unused:  # the dropped pairs' scales and zero points
        model.graph.initializer.remove(init)
    return model


def small_weighted_nodes(model: onnx.ModelProto, nodes: Iterable[str], minimum: int) -> set[str]:
    """Those of `nodes` whose weight has fewer than `minimum` output channels or input channels
    per group (Conv), or a dimension below it (Gemm/MatMul): INT8 kernels are slower than FP16
    there (TensorRT pads them to its vector width), so ModelOpt leaves them unquantised.

    Args:
        model: the float model with unique node names.
        nodes: names of the weighted nodes being quantised.
        minimum: the smallest channel count worth INT8 (0: none is too small).
    """
    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    wanted = set(nodes)
    small = set()
    for node in model.graph.node:
        weight = shapes.get(node.input[1]) if node.name in wanted and len(node.input) > 1 else None
        if weight is None or len(weight) < 2:
            continue
        dims = weight[:2] if node.op_type in ("Conv", "ConvTranspose") else weight[-2:]
        if min(dims) < minimum:
            small.add(node.name)
    return small
