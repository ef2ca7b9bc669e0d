"""The op vocabulary and shape predicates that gate analysis and the gate rules read graphs with.

Which ops act on a channel vector element-wise, pairwise, as a relayout or as a linear map; which
ops pool; and the predicates that tell a channel vector, a feature map, a spatial reduction and
the pooling forms exporters lower to (constant MatMuls, a whole-map Conv) apart by their shapes
and constants. `gate_analysis` walks gates with them; `rules.se_gate` re-emits gates with them.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from sase_deploy.graph_io.ops import reduce_axes as read_reduce_axes
from sase_deploy.rewrite.graph_utils import const_value, producer, shape_of, spatial_size

# Ops that act on each element alone (a channel vector stays a channel vector).
UNARY_OPS = frozenset(
    {
        "Relu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "LeakyRelu", "Elu", "Selu",
        "Softplus", "Gelu", "Erf", "Neg", "Exp", "Clip", "Identity", "PRelu", "Celu", "Mish",
        "Softsign", "ThresholdedRelu",
    }
)  # fmt: skip
BINARY_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean"})
RELAYOUT_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Expand"})
LINEAR_OPS = frozenset({"Gemm", "MatMul"})
GLOBAL_POOLS = frozenset({"GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax"})
REGION_POOLS = frozenset({"AveragePool", "MaxPool"})
SIGMOID_LIKE = frozenset({"Sigmoid", "HardSigmoid"})


def reduce_axes(node: gs.Node) -> list[int] | None:
    """Axes of a Reduce* (or Unsqueeze/Squeeze) node, attribute before opset 18 (13), input
    since: `[]` for every axis, None when computed at run time."""
    inputs = [t for t in node.inputs if t.name]  # an omitted optional input is an empty name
    axes = const_value(inputs[1]) if len(inputs) > 1 else None
    return read_reduce_axes(node.attrs.get("axes"), axes, len(inputs))


def is_spatial_reduce(node: gs.Node) -> bool:
    """A Reduce* node whose constant axes are exactly the spatial axes (2 .. rank-1)."""
    shape = shape_of(node.inputs[0])
    axes = reduce_axes(node)
    if shape is None or axes is None:
        return False
    rank = len(shape)
    return rank >= 3 and sorted(a % rank for a in axes) == list(range(2, rank))


def vector_channels(shape: tuple[int | None, ...] | None) -> int | None:
    """C when the shape is a channel vector (one non-1 dim besides batch), else None."""
    if shape is None or len(shape) < 2 or any(d is None for d in shape[1:]):
        return None
    big = [int(d) for d in shape[1:] if d is not None and d != 1]
    if len(big) > 1:
        return None
    return big[0] if big else 1


def is_feature_map(tensor: gs.Tensor) -> bool:
    """A 4-D NCHW tensor with a spatial extent larger than one pixel."""
    size = spatial_size(tensor)
    return size is not None and len(size) == 2 and size[0] * size[1] > 1


def is_pooled(tensor: gs.Tensor) -> bool:
    """`tensor` comes straight from a region pool (or a lowered adaptive pool)."""
    node = producer(tensor)
    return node is not None and (node.op in REGION_POOLS or is_spatial_matmul(node))


def is_weighted_global_pool(node: gs.Node) -> bool:
    """A Conv with constant weights whose one window covers its whole (feature-map) input."""
    if node.op != "Conv" or len(node.inputs) < 2 or const_value(node.inputs[1]) is None:
        return False
    size = spatial_size(node.inputs[0])
    weight = const_value(node.inputs[1])
    if size is None or len(size) != 2 or size[0] * size[1] <= 1 or weight is None:
        return False
    pads = node.attrs.get("pads") or [0, 0, 0, 0]
    return tuple(weight.shape[2:]) == size and not any(int(p) for p in pads)


def is_spatial_matmul(node: gs.Node) -> bool:
    """MatMul of a 4-D map by a constant non-negative matrix over H (left) or W (right)."""
    if node.op != "MatMul" or len(node.inputs) != 2:
        return False
    left, right = (const_value(t) for t in node.inputs)
    if (left is None) == (right is None):
        return False
    const = left if left is not None else right
    data = node.inputs[1] if left is not None else node.inputs[0]
    size = spatial_size(data)
    if const is None or const.ndim != 2 or size is None or len(size) != 2 or (const < 0).any():
        return False
    return const.shape[1] == size[0] if left is not None else const.shape[0] == size[1]
