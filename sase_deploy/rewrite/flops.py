"""GFLOP of an ONNX graph, counted from its ops and inferred shapes (batch and unknown dims -> 1).

A multiply-add counts as 2 FLOP. Conv/ConvTranspose/Gemm/MatMul dominate and are exact;
elementwise ops, pools, reductions, normalisation and resizes count one FLOP per element they
read or write (an estimate: it is what makes many small operators visible in the total). Shape
and data-movement ops (Reshape, Concat, Split, Gather, ...) count zero. Written by hand: onnx and
ORT ship no FLOP counter, and the third-party ones would be a new dependency for 60 lines.
"""

from __future__ import annotations

import numpy as np
import onnx

from sase_deploy.graph_io import infer_shapes

_ZERO = frozenset(
    {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Concat", "Split", "Slice",
     "Gather", "Shape", "Expand", "Identity", "Cast", "Constant", "ConstantOfShape", "Tile",
     "Pad", "Range", "Size"}
)  # fmt: skip
_PER_INPUT = frozenset(
    {"GlobalAveragePool", "GlobalMaxPool", "AveragePool", "MaxPool", "ReduceMean", "ReduceMax",
     "ReduceSum", "ReduceMin", "Softmax"}
)  # fmt: skip


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    inferred = infer_shapes(model)
    shapes: dict[str, tuple[int, ...]] = {}
    values = [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]
    for value in values:
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = tuple(d.dim_value if d.dim_value > 0 else 1 for d in dims)
    for init in inferred.graph.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes


def _numel(shape: tuple[int, ...] | None) -> int:
    return int(np.prod(shape, dtype=np.int64)) if shape else 1


def count_flops(model: onnx.ModelProto) -> int:
    """Total FLOP of one inference of `model` (see the module docstring for what counts)."""
    shapes = _shapes(model)
    total = 0
    for node in model.graph.node:
        out = shapes.get(node.output[0]) if node.output else None
        ins = [shapes.get(name) for name in node.input]
        op = node.op_type
        if op == "Conv" and out is not None and ins[1] is not None:
            weight = ins[1]
            total += 2 * _numel(out) * _numel(weight[1:])
        elif op == "ConvTranspose" and ins[0] is not None and ins[1] is not None:
            weight = ins[1]
            total += 2 * _numel(ins[0]) * _numel(weight[1:])
        elif op in ("Gemm", "MatMul") and out is not None and ins[0] is not None:
            a = ins[0]
            k = a[-1] if op == "MatMul" else _gemm_k(node, a)
            total += 2 * _numel(out) * k
        elif op in _ZERO:
            continue
        elif op in _PER_INPUT and ins and ins[0] is not None:
            total += _numel(ins[0])
        elif op == "BatchNormalization" and out is not None:
            total += 2 * _numel(out)
        elif out is not None:
            total += _numel(out)
    return total


def _gemm_k(node: onnx.NodeProto, a: tuple[int, ...]) -> int:
    trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
    return a[0] if trans_a else a[-1]


def count_gflops(model: onnx.ModelProto) -> float:
    return count_flops(model) / 1e9
