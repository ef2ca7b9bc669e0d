"""Inspecting an exported graph: random ops, node counts, op histogram, I/O descriptions.

Simplification, shape inference and naming live in `sase_deploy.graph_io` (all stages share
them). onnxslim was measured beside graphsurgeon's folding there (benchmarks/bench_export.py,
se_resnet50): same node count from both exporters' graphs, same outputs, 2-3x slower; so it is
not worth a new dependency.
"""

from __future__ import annotations

from collections import Counter

import onnx

# Ops that make a graph non-deterministic: a deployed SE model must never contain them.
RANDOM_OPS = (
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
)


def _graphs(graph: onnx.GraphProto) -> list[onnx.GraphProto]:
    found = [graph]
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                found.extend(_graphs(attr.g))
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    found.extend(_graphs(sub))
    return found


def random_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of nodes (also in subgraphs and local functions) that draw random numbers."""
    graphs = _graphs(model.graph)
    hits = [
        f"{node.op_type} '{node.name}'"
        for graph in graphs
        for node in graph.node
        if node.op_type in RANDOM_OPS
    ]
    hits += [
        f"{node.op_type} in function '{fn.name}'"
        for fn in model.functions
        for node in fn.node
        if node.op_type in RANDOM_OPS
    ]
    return hits


def node_count(model: onnx.ModelProto) -> int:
    return len(model.graph.node)


def op_histogram(model: onnx.ModelProto) -> dict[str, int]:
    return dict(sorted(Counter(node.op_type for node in model.graph.node).items()))


def describe_values(values: list[onnx.ValueInfoProto]) -> list[dict[str, object]]:
    """Name, shape (ints; a dynamic dim's symbolic name) and dtype of graph inputs/outputs."""
    described: list[dict[str, object]] = []
    for value in values:
        tensor = value.type.tensor_type
        shape: list[int | str] = [
            dim.dim_param if dim.HasField("dim_param") else int(dim.dim_value)
            for dim in tensor.shape.dim
        ]
        described.append(
            {
                "name": value.name,
                "shape": shape,
                "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name,
            }
        )
    return described
