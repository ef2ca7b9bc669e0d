"""Small onnx-graphsurgeon helpers the rewrite rules share.

Constant access (initializers and `Constant` nodes alike), shape lookups, producer/consumer
walks, new-node builders with deterministic names, and BatchNorm folding. graphsurgeon covers
graph surgery itself; these fill the gaps the rules need over and over, nothing more.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from sase_deploy.graph_io import infer_shapes, replace_uses, unique_node_names

Dim = int | None  # None: unknown or symbolic (e.g. a dynamic batch)


# ---------------------------------------------------------------- import / export round trip


def import_graph(model: onnx.ModelProto) -> gs.Graph:
    """Shape-infer `model`, import it and turn `Constant` nodes into constants.

    Every node gets a non-empty, unique name so rules can anchor on it.
    """
    graph = gs.import_onnx(infer_shapes(model))
    lower_constant_nodes(graph)
    fold_constant_identities(graph)
    name_unnamed_nodes(graph)
    return graph


def fold_constant_identities(graph: gs.Graph) -> int:
    """Read `Identity(constant)` as the constant itself; returns how many were folded.

    TorchScript dedupes equal initializers (e.g. every zero BN running_mean) into Identity
    nodes of one shared initializer; rules should see the value, not an Identity.
    """
    count = 0
    graph_outputs = {id(t) for t in graph.outputs}
    for node in list(graph.nodes):
        if node.op != "Identity" or len(node.inputs) != 1 or len(node.outputs) != 1:
            continue
        source, out = node.inputs[0], node.outputs[0]
        if not isinstance(source, gs.Constant) or id(out) in graph_outputs:
            continue
        replace_uses(graph, out, source)
        node.outputs.clear()
        count += 1
    if count:
        graph.cleanup(remove_unused_graph_inputs=False)
    return count


def lower_constant_nodes(graph: gs.Graph) -> int:
    """Replace every `Constant` node by a gs.Constant (what both exporters mean by it)."""
    count = 0
    for node in list(graph.nodes):
        if node.op != "Constant" or len(node.outputs) != 1:
            continue
        value = node.attrs.get("value")
        if isinstance(value, gs.Constant):
            array = np.asarray(value.values)
        elif "value_float" in node.attrs:
            array = np.array(node.attrs["value_float"], dtype=np.float32)
        elif "value_int" in node.attrs:
            array = np.array(node.attrs["value_int"], dtype=np.int64)
        elif "value_floats" in node.attrs:
            array = np.array(node.attrs["value_floats"], dtype=np.float32)
        elif "value_ints" in node.attrs:
            array = np.array(node.attrs["value_ints"], dtype=np.int64)
        else:
            continue
        out = node.outputs[0]
        const = gs.Constant(out.name, np.array(array, order="C"))
        for consumer in list(out.outputs):
            for i, t in enumerate(consumer.inputs):
                if t is out:
                    consumer.inputs[i] = const
        for t in graph.outputs:
            if t is out:  # a graph output must stay a Variable: keep the node
                break
        else:
            node.outputs.clear()
            count += 1
    graph.cleanup(remove_unused_graph_inputs=False)
    return count


def name_unnamed_nodes(graph: gs.Graph) -> None:
    """Give every node a unique, deterministic name (op + index in topological order)."""
    names = unique_node_names([n.op for n in graph.nodes], [n.name for n in graph.nodes])
    for node, name in zip(graph.nodes, names, strict=True):
        node.name = name


# ---------------------------------------------------------------- walking the graph


def producer(tensor: gs.Tensor) -> gs.Node | None:
    """The node that produces `tensor` (None for graph inputs and constants)."""
    return tensor.inputs[0] if tensor.inputs else None


def consumers(tensor: gs.Tensor) -> list[gs.Node]:
    return list(tensor.outputs)


def is_graph_output(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    return any(t is tensor for t in graph.outputs)


def const_value(tensor: gs.Tensor | None) -> np.ndarray | None:
    """The value of a constant tensor (initializer or `Constant` node output), else None."""
    if tensor is None:
        return None
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    node = producer(tensor)
    if node is not None and node.op == "Constant":
        value = node.attrs.get("value")
        if isinstance(value, gs.Constant):
            return np.asarray(value.values)
    return None


def scalar_value(tensor: gs.Tensor | None) -> float | None:
    value = const_value(tensor)
    if value is None or value.size != 1:
        return None
    return float(value.reshape(()))


def shape_of(tensor: gs.Tensor) -> tuple[Dim, ...] | None:
    """The tensor's shape, symbolic/unknown dims as None; None when the rank is unknown."""
    if isinstance(tensor, gs.Constant):
        return tuple(int(d) for d in tensor.values.shape)
    if tensor.shape is None:
        return None
    return tuple(d if isinstance(d, int) and d >= 0 else None for d in tensor.shape)


def spatial_size(tensor: gs.Tensor) -> tuple[int, ...] | None:
    """The static spatial dims of an NC... tensor, None when rank < 3 or any is unknown."""
    shape = shape_of(tensor)
    if shape is None or len(shape) < 3 or any(d is None for d in shape[2:]):
        return None
    return tuple(int(d) for d in shape[2:])  # type: ignore[arg-type]


def channels(tensor: gs.Tensor) -> int | None:
    shape = shape_of(tensor)
    if shape is None or len(shape) < 2:
        return None
    return shape[1]


def attr_ints(node: gs.Node, name: str, default: Sequence[int] = ()) -> list[int]:
    value = node.attrs.get(name)
    if value is None:
        return list(default)
    return [int(v) for v in value]


# ---------------------------------------------------------------- building nodes


def unique_name(graph: gs.Graph, base: str) -> str:
    """`base` if no node or tensor uses it, else `base_1`, `base_2`, ... (deterministic)."""
    taken = {n.name for n in graph.nodes} | set(graph.tensors().keys())
    if base not in taken:
        return base
    i = 1
    while f"{base}_{i}" in taken:
        i += 1
    return f"{base}_{i}"


def make_constant(graph: gs.Graph, name: str, array: np.ndarray) -> gs.Constant:
    return gs.Constant(unique_name(graph, name), np.array(array, order="C"))


def make_node(
    graph: gs.Graph,
    op: str,
    name: str,
    inputs: Sequence[gs.Tensor],
    *,
    attrs: dict[str, Any] | None = None,
    output: gs.Variable | None = None,
    dtype: Any = np.float32,
    shape: Sequence[int | str | None] | None = None,
) -> gs.Variable:
    """Append one node to `graph`; returns its (new or given) output tensor."""
    node_name = unique_name(graph, name)
    if output is None:
        output = gs.Variable(unique_name(graph, f"{node_name}_out"), dtype=dtype, shape=shape)
    graph.nodes.append(
        gs.Node(
            op=op, name=node_name, attrs=dict(attrs or {}), inputs=list(inputs), outputs=[output]
        )
    )
    return output


def detach(nodes: Sequence[gs.Node]) -> None:
    """Disconnect `nodes` (outputs cleared) so the next cleanup removes them."""
    for node in nodes:
        node.outputs.clear()
        node.inputs.clear()


# ---------------------------------------------------------------- BatchNorm


@dataclass(frozen=True)
class BatchNormParams:
    """Inference-mode BatchNormalization as y = x * scale + shift (per channel, float64)."""

    scale: np.ndarray
    shift: np.ndarray


def batchnorm_params(node: gs.Node) -> BatchNormParams | None:
    """The affine form of a BatchNormalization node with constant statistics, else None."""
    if node.op != "BatchNormalization" or len(node.inputs) < 5:
        return None
    if int(node.attrs.get("training_mode", 0)) != 0 or len(node.outputs) != 1:
        return None
    values = [const_value(t) for t in node.inputs[1:5]]
    if any(v is None for v in values):
        return None
    gamma, beta, mean, var = (np.asarray(v, dtype=np.float64) for v in values)
    eps = float(node.attrs.get("epsilon", 1e-5))
    scale = gamma / np.sqrt(var + eps)
    return BatchNormParams(scale=scale, shift=beta - mean * scale)


def fold_batchnorm(
    weight: np.ndarray, bias: np.ndarray | None, bn: BatchNormParams
) -> tuple[np.ndarray, np.ndarray]:
    """Fold `bn` applied after a conv/linear with `weight` (out-channels first) and `bias`.

    Computed in float64, returned as float32.
    """
    w = np.asarray(weight, dtype=np.float64)
    b = np.zeros(w.shape[0]) if bias is None else np.asarray(bias, dtype=np.float64)
    scale = bn.scale.reshape((-1,) + (1,) * (w.ndim - 1))
    return (w * scale).astype(np.float32), (b * bn.scale + bn.shift).astype(np.float32)


def linear_as_conv_weight(matrix: np.ndarray, transposed: bool) -> np.ndarray:
    """A Gemm/MatMul weight as a 1x1 Conv weight (Cout, Cin, 1, 1).

    MatMul(x, W) has W as (Cin, Cout); Gemm with transB=1 has (Cout, Cin).
    """
    m = np.asarray(matrix)
    w = m if transposed else m.T
    return np.ascontiguousarray(w.reshape(w.shape[0], w.shape[1], 1, 1))
