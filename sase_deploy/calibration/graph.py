"""Read-only graph analysis for precision decisions, by what nodes compute (never by names).

- where TensorRT fuses Q/DQ: inputs of Conv/ConvTranspose/Gemm/MatMul and residual Adds;
- squeeze-excitation gate paths (SE, SLE, SPSE, RGSE, SASE's style branches): the detector that
  fusion uses too (`sase_deploy.rewrite.gates`);
- the SASE normalisation `Σm + eps` and its division;
- reductions over large maps (FP16 accumulation risk).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import numpy_helper

from sase_deploy.graph_io import infer_shapes, name_nodes
from sase_deploy.graph_io.ops import reduce_axes
from sase_deploy.rewrite.gates import find_gates

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Ops that accumulate over a map (FP16 accumulation risk: `large_reductions`).
GLOBAL_POOLS = ("GlobalAveragePool", "GlobalMaxPool")
REDUCTIONS = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceL2", "ReduceSumSquare")
EPS_LIMIT = 1e-2  # a constant added to a denominator below this is an epsilon


def named_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose nodes all have unique names (ORT's quantizer selects nodes by name)."""
    return name_nodes(onnx.ModelProto.FromString(model.SerializeToString()), rename_all=False)


def with_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with inferred shapes where onnx can infer them (best effort)."""
    return infer_shapes(model)


class GraphIndex:
    """Producers, constants and static shapes of one graph."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        graph = model.graph
        self.constants: dict[str, np.ndarray] = {
            init.name: numpy_helper.to_array(init) for init in graph.initializer
        }
        for node in graph.node:
            if node.op_type == "Constant" and node.attribute:
                attr = node.attribute[0]
                if attr.name == "value":
                    self.constants[node.output[0]] = numpy_helper.to_array(attr.t)
        self.producer: dict[str, onnx.NodeProto] = {}
        for node in graph.node:
            for out in node.output:
                self.producer[out] = node
        self.shapes: dict[str, tuple[int | None, ...]] = {}
        for vi in (*graph.input, *graph.value_info, *graph.output):
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
                self.shapes[vi.name] = tuple(
                    d.dim_value if d.HasField("dim_value") else None
                    for d in vi.type.tensor_type.shape.dim
                )
        for name, value in self.constants.items():
            self.shapes[name] = tuple(value.shape)

    def dynamic_inputs(self, node: onnx.NodeProto) -> list[str]:
        return [i for i in node.input if i and i not in self.constants]


def _reduce_axes(index: GraphIndex, node: onnx.NodeProto) -> list[int] | None:
    attribute = next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
    inputs = [name for name in node.input if name]
    axes_input = index.constants.get(inputs[1]) if len(inputs) > 1 else None
    return reduce_axes(attribute, axes_input, len(inputs))


def gate_path_nodes(model: onnx.ModelProto) -> set[str]:
    """Nodes on the paths of the model's SE-family gates and SASE style branches: from the
    pooling to the gate value (pool -> MLP -> sigmoid), as `rewrite.gates` finds them for
    fusion too. `model` must have unique node names (`named_copy`)."""
    return {name for gate in find_gates(model) for name in gate.path}


def residual_adds(model: onnx.ModelProto) -> set[str]:
    """Adds of two same-shape activations where one comes from a conv (possibly SE-scaled)."""
    index = GraphIndex(model)

    def from_conv(tensor: str, depth: int = 0) -> bool:
        node = index.producer.get(tensor)
        if node is None or depth > 2:
            return False
        if node.op_type in ("Conv", "ConvTranspose"):
            return True
        if node.op_type in ("BatchNormalization", "Mul"):
            return any(from_conv(i, depth + 1) for i in index.dynamic_inputs(node))
        return False

    result = set()
    for node in model.graph.node:
        if node.op_type != "Add":
            continue
        inputs = index.dynamic_inputs(node)
        if len(inputs) != 2:
            continue
        shapes = [index.shapes.get(i) for i in inputs]
        if shapes[0] is not None and shapes[1] is not None and shapes[0] != shapes[1]:
            continue
        if any(from_conv(i) for i in inputs):
            result.add(node.name)
    return result


def quantizable_nodes(model: onnx.ModelProto) -> set[str]:
    """Where TensorRT wants Q/DQ: weighted ops' inputs and residual adds."""
    weighted = {n.name for n in model.graph.node if n.op_type in WEIGHTED_OPS}
    return weighted | residual_adds(model)


def normalisation_nodes(model: onnx.ModelProto) -> set[str]:
    """SASE's `Σ_g m_g / (Σ_g m_g + eps)` denominators: the Div, the eps Add and the Σ chain.

    Found as a Div whose denominator is `X + c` with a tiny constant c, or a ReduceSum/Sum.
    """
    index = GraphIndex(model)
    result: set[str] = set()

    def sum_chain(tensor: str, depth: int = 0) -> None:
        node = index.producer.get(tensor)
        if node is None or depth > 64 or node.op_type not in ("Add", "Sum", "ReduceSum"):
            return
        result.add(node.name)
        for inp in index.dynamic_inputs(node):
            sum_chain(inp, depth + 1)

    for node in model.graph.node:
        if node.op_type != "Div" or len(node.input) < 2:
            continue
        denominator = index.producer.get(node.input[1])
        if denominator is None:
            continue
        eps_add = False
        if denominator.op_type == "Add":
            consts = [i for i in denominator.input if i in index.constants]
            eps_add = (
                len(consts) == 1 and float(np.abs(index.constants[consts[0]]).max()) <= EPS_LIMIT
            )
        if eps_add or denominator.op_type in ("ReduceSum", "Sum"):
            result.add(node.name)
            result.add(denominator.name)
            for inp in index.dynamic_inputs(denominator):
                sum_chain(inp)
    return result


def large_reductions(model: onnx.ModelProto, limit: int) -> set[str]:
    """Reductions/pools that sum more than `limit` elements per output (or an unknown count)."""
    index = GraphIndex(model)
    result = set()
    for node in model.graph.node:
        if node.op_type not in (*GLOBAL_POOLS, *REDUCTIONS):
            continue
        shape = index.shapes.get(node.input[0])
        count: float
        if shape is None:
            count = math.inf
        elif node.op_type in GLOBAL_POOLS:
            dims = shape[2:]
            count = math.inf if any(d is None for d in dims) else math.prod(d for d in dims if d)
        else:
            axes = _reduce_axes(index, node)
            if axes is None:
                count = math.inf
            else:
                picked = [a % len(shape) for a in axes] if axes else range(len(shape))
                reduced = [shape[a] for a in picked]
                count = (
                    math.inf
                    if any(d is None for d in reduced)
                    else math.prod(d for d in reduced if d)
                )
        if count > limit:
            result.add(node.name)
    return result


def producers_of(model: onnx.ModelProto, tensors: Iterable[str]) -> set[str]:
    index = GraphIndex(model)
    return {index.producer[t].name for t in tensors if t in index.producer}


def float_tensor_names(model: onnx.ModelProto) -> set[str]:
    """Graph inputs and node outputs (the names TensorRT's ONNX parser gives its tensors)."""
    names = {i.name for i in model.graph.input}
    for node in model.graph.node:
        names.update(o for o in node.output if o)
    return names
