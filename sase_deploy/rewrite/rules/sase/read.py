"""Graph readers the SASE matcher builds on: channel chunks, conv/linear layers, sums.

Readers walk backwards from a tensor and return what the rewrite needs (layers as float32
arrays with BatchNorm folded, the channel range of a source map). They raise `NoMatch` when the
subgraph is not of the expected form and `NoMatch.near` when it is but cannot be rewritten
exactly; both carry a clause saying what was found (the matcher decides whether a plain
`NoMatch` is reported: only where the anchor has the SASE modulation signature).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeGuard

import numpy as np
import onnx_graphsurgeon as gs

from sase_deploy.rewrite.graph_utils import (
    attr_ints,
    batchnorm_params,
    const_value,
    fold_batchnorm,
    producer,
    shape_of,
)
from sase_deploy.rewrite.rule import NoMatch


@dataclass
class Layer:
    """One conv/linear with BN folded: weight (out, in, kh, kw) and bias (out,), float32."""

    weight: np.ndarray
    bias: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)  # conv geometry (empty for linears)

    def signature(self) -> tuple[Any, ...]:
        return (self.weight.shape, tuple(sorted((k, str(v)) for k, v in self.attrs.items())))


@dataclass
class Chunk:
    """Channels [start, stop) of `source`, which has `channels` channels."""

    source: gs.Tensor
    start: int
    stop: int
    channels: int


def node_of(tensor: gs.Tensor) -> gs.Node:
    """The node producing `tensor`; NoMatch for graph inputs and constants."""
    node = producer(tensor)
    if node is None:
        raise NoMatch(f"'{tensor.name}' is a graph input or constant, not computed in the block")
    return node


def found(node: gs.Node, expected: str) -> str:
    """The clause for a NoMatch: which node stood where something else was expected."""
    return f"{node.op} '{node.name}' stands where {expected} was expected"


def is_const(tensor: gs.Tensor) -> bool:
    return const_value(tensor) is not None


def is_sum(node: gs.Node | None) -> TypeGuard[gs.Node]:
    """An Add/Sum of non-constant tensors (an Add of a constant is a bias, not a sum)."""
    return (
        node is not None
        and node.op in ("Add", "Sum")
        and len(node.inputs) >= 2
        and not any(is_const(t) for t in node.inputs)
    )


def sum_terms(tensor: gs.Tensor) -> list[gs.Tensor]:
    """Leaves of an Add tree of non-constant tensors (a single tensor is a one-term sum)."""
    node = producer(tensor)
    if not is_sum(node):
        return [tensor]
    return [term for t in node.inputs for term in sum_terms(t)]


# ---------------------------------------------------------------- channel chunks


def chunk_of(tensor: gs.Tensor) -> Chunk:
    """The channel range of `tensor` inside its source (Split output or Slice on axis 1)."""
    node = node_of(tensor)
    if node.op == "Split":
        return _split_chunk(node, tensor)
    if node.op == "Slice":
        return _slice_chunk(node)
    raise NoMatch(found(node, "a channel Split or Slice of the source map"))


def _split_chunk(node: gs.Node, tensor: gs.Tensor) -> Chunk:
    source = node.inputs[0]
    if int(node.attrs.get("axis", 0)) not in (1, -3):
        raise NoMatch.near("the groups are split along an axis other than channels")
    sizes = const_value(node.inputs[1]) if len(node.inputs) > 1 else None
    if sizes is None and "split" in node.attrs:
        sizes = np.asarray(node.attrs["split"])
    shape = shape_of(source)
    total = shape[1] if shape is not None and len(shape) == 4 else None
    if sizes is None:
        if total is None or total % len(node.outputs):
            raise NoMatch.near("the source channel count is unknown or not divisible by G")
        sizes = np.full(len(node.outputs), total // len(node.outputs))
    widths = [int(s) for s in np.asarray(sizes).reshape(-1)]
    index = next(i for i, t in enumerate(node.outputs) if t is tensor)
    start = sum(widths[:index])
    return Chunk(source, start, start + widths[index], sum(widths))


def _slice_chunk(node: gs.Node) -> Chunk:
    source = node.inputs[0]
    shape = shape_of(source)
    if shape is None or len(shape) != 4 or shape[1] is None:
        raise NoMatch.near("the source of the channel slices has no static channel count")
    values = [const_value(t) for t in node.inputs[1:5]]
    starts, ends = values[0], values[1]
    axes = values[2] if len(values) > 2 and values[2] is not None else np.array([0])
    steps = values[3] if len(values) > 3 and values[3] is not None else np.array([1])
    if starts is None or ends is None or starts.size != 1:
        raise NoMatch(f"Slice '{node.name}' has no constant single-axis bounds")
    if int(axes.reshape(-1)[0]) not in (1, -3) or int(steps.reshape(-1)[0]) != 1:
        raise NoMatch(f"Slice '{node.name}' does not take a contiguous channel range")
    total = int(shape[1])
    start = min(max(int(starts.reshape(-1)[0]), 0), total)
    stop = min(max(int(ends.reshape(-1)[0]), 0), total)
    return Chunk(source, start, stop, total)


# ---------------------------------------------------------------- layers


def _conv_layer(node: gs.Node) -> Layer:
    weight = const_value(node.inputs[1])
    if weight is None or weight.ndim != 4:
        raise NoMatch.near("a mask conv has non-constant weights")
    if int(node.attrs.get("group", 1)) != 1:
        raise NoMatch.near("a mask conv is already grouped")
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", b"NOTSET"):
        raise NoMatch.near("a mask conv uses auto_pad")
    bias = const_value(node.inputs[2]) if len(node.inputs) > 2 else None
    if bias is None:
        bias = np.zeros(weight.shape[0], dtype=np.float32)
    attrs = {
        "strides": attr_ints(node, "strides", [1, 1]),
        "pads": attr_ints(node, "pads", [0, 0, 0, 0]),
        "dilations": attr_ints(node, "dilations", [1, 1]),
    }
    return Layer(weight.astype(np.float32), bias.astype(np.float32), attrs)


def with_bn(layer: Layer, bn: gs.Node | None) -> Layer:
    if bn is None:
        return layer
    params = batchnorm_params(bn)
    if params is None:
        raise NoMatch.near("a BatchNormalization in a branch is in training mode or not constant")
    weight, bias = fold_batchnorm(layer.weight, layer.bias, params)
    return Layer(weight, bias, layer.attrs)


def conv_chain(tensor: gs.Tensor) -> tuple[list[Layer], gs.Tensor]:
    """Convs (BN folded) separated by ReLUs, read backwards: (layers in order, chain input)."""
    layers: list[Layer] = []
    current = tensor
    while True:
        node = node_of(current)
        bn = None
        if node.op == "BatchNormalization":
            bn, node = node, node_of(node.inputs[0])
        if node.op != "Conv":
            raise NoMatch(found(node, "a mask Conv [-> BN]"))
        layers.append(with_bn(_conv_layer(node), bn))
        current = node.inputs[0]
        before = producer(current)
        if before is None or before.op != "Relu":
            break
        current = before.inputs[0]
    layers.reverse()
    return layers, current


def _gemm_layer(node: gs.Node) -> tuple[Layer, gs.Tensor] | None:
    weight = const_value(node.inputs[1])
    if weight is None or int(node.attrs.get("transA", 0)) != 0:
        return None
    if not int(node.attrs.get("transB", 0)):
        weight = weight.T
    weight = weight * float(node.attrs.get("alpha", 1.0))
    bias = const_value(node.inputs[2]) if len(node.inputs) > 2 else None
    bias = np.zeros(weight.shape[0]) if bias is None else bias * float(node.attrs.get("beta", 1.0))
    if bias.size not in (1, weight.shape[0]):
        return None
    bias = np.broadcast_to(bias.reshape(-1), (weight.shape[0],))
    return Layer(weight.astype(np.float32), bias.astype(np.float32)), node.inputs[0]


def linear_layer(node: gs.Node) -> tuple[Layer, gs.Tensor] | None:
    """Gemm, or MatMul (+ Add bias), with constant weights -> (layer (out, in), input)."""
    if node.op == "Gemm":
        return _gemm_layer(node)
    add_bias = None
    if node.op == "Add":
        consts = [const_value(t) for t in node.inputs]
        if len(node.inputs) != 2 or (consts[0] is None) == (consts[1] is None):
            return None
        add_bias = consts[0] if consts[0] is not None else consts[1]
        inner = node.inputs[1] if consts[0] is not None else node.inputs[0]
        node = node_of(inner)
    if node.op != "MatMul":
        return None
    weight = const_value(node.inputs[1])
    if weight is None or weight.ndim != 2:
        return None
    weight = weight.T
    bias = np.zeros(weight.shape[0]) if add_bias is None else add_bias.reshape(-1)
    if bias.size not in (1, weight.shape[0]):
        return None
    bias = np.broadcast_to(bias, (weight.shape[0],))
    return Layer(weight.astype(np.float32), bias.astype(np.float32)), node.inputs[0]
